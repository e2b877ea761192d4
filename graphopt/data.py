"""Calibration / evaluation data: ``.npz`` files or folders of them, checked against the model.

Format: keys are the model's input names, axis 0 indexes samples, an optional ``labels`` key holds
integer class labels (one per sample). A folder may hold several ``.npz`` files (concatenated in
name order) or one ``<input_name>.npy`` per input plus an optional ``labels.npy``.

Every array is checked against the model before any pass runs: names, dtypes, ranks, static dims,
and finiteness. A mismatch raises :class:`InputError` naming the input, the shape given and the
shape expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

LABELS_KEY = "labels"
Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype and shape (``str``/``None`` for dynamic dims)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]

    @property
    def static_batch(self) -> int | None:
        return self.shape[0] if self.shape and isinstance(self.shape[0], int) else None

    def describe(self) -> str:
        dims = ", ".join(str(d) if isinstance(d, int) else (d or "?") for d in self.shape)
        return f"({dims})"


def input_specs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (initializers listed as inputs excluded)."""
    specs = []
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.dtype(np.float32)
        shape: tuple[Dim, ...] = ()
        if value.shape is not None:
            shape = tuple(d if isinstance(d, int) else (str(d.value) if d.value is not None else None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs


@dataclasses.dataclass
class DataSet:
    """Samples for every model input (axis 0 = samples) and optional labels."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<memory>"
    synthetic: bool = False

    def __post_init__(self) -> None:
        counts = {name: len(array) for name, array in self.inputs.items()}
        if self.labels is not None:
            counts[LABELS_KEY] = len(self.labels)
        if len(set(counts.values())) > 1:
            raise InputError(f"{self.source}: arrays disagree on the number of samples (axis 0): {counts}")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of at most ``batch_size`` samples, in order."""
        for start in range(0, len(self), batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def take(self, count: int) -> DataSet:
        """The first ``count`` samples (all of them when fewer)."""
        labels = None if self.labels is None else self.labels[:count]
        return DataSet({k: v[:count] for k, v in self.inputs.items()}, labels, self.source, self.synthetic)

    def fingerprint(self) -> str:
        """A content hash, part of the cache key of passes that read data."""
        import hashlib

        digest = hashlib.sha256()
        for name in sorted(self.inputs):
            array = np.ascontiguousarray(self.inputs[name])
            digest.update(name.encode())
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(array.tobytes())
        if self.labels is not None:
            digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()

    def batch_size_for(self, specs: Sequence[InputSpec], preferred: int = 16) -> int:
        """Models with a static batch dimension must be fed exactly that many samples at a time."""
        static = {spec.static_batch for spec in specs if spec.static_batch is not None}
        return static.pop() if static else preferred

    def check_against(self, specs: Sequence[InputSpec], role: str) -> None:
        """Raise :class:`InputError` (one line) unless the data fits the model's inputs."""
        expected = {spec.name for spec in specs}
        given = set(self.inputs)
        missing, unknown = sorted(expected - given), sorted(given - expected)
        if missing or unknown:
            parts = []
            if missing:
                parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
            if unknown:
                parts.append(f"unknown key(s) {', '.join(map(repr, unknown))}")
            raise InputError(
                f"{role} data {self.source}: {'; '.join(parts)} (model inputs: {', '.join(sorted(expected))})"
            )
        if len(self) == 0:
            raise InputError(f"{role} data {self.source} holds no samples")
        for spec in specs:
            array = self.inputs[spec.name]
            given_shape = "(" + ", ".join(map(str, array.shape)) + ")"
            where = f"{role} data {self.source} has input '{spec.name}'"
            if array.dtype != spec.dtype:
                raise InputError(f"{where} of dtype {array.dtype} but the model expects {spec.dtype}")
            if spec.shape and array.ndim != len(spec.shape):
                raise InputError(f"{where} of shape {given_shape} but the model expects {spec.describe()}")
            for axis, dim in enumerate(spec.shape[1:], start=1):
                if isinstance(dim, int) and array.shape[axis] != dim:
                    raise InputError(f"{where} of shape {given_shape} but the model expects {spec.describe()}")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise InputError(f"{where} with {bad} NaN/Inf value(s); clean the data first")
        if self.labels is not None and self.labels.dtype.kind not in "iu":
            raise InputError(f"{role} data {self.source}: 'labels' must be integers, got {self.labels.dtype}")


def load_data(path: str | Path) -> DataSet:
    """Read a ``.npz`` file, a ``.npy``-per-input folder or a folder of ``.npz`` files."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"data not found: {path}")
    if path.is_dir():
        return _load_folder(path)
    return _load_npz(path)


def _load_npz(path: Path) -> DataSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except Exception as exc:
        raise InputError(f"cannot read data file {path} (expected .npz): {str(exc).splitlines()[0][:200]}") from exc
    if not isinstance(arrays, dict) or not arrays:
        raise InputError(f"data file {path} holds no arrays")
    labels = arrays.pop(LABELS_KEY, None)
    return DataSet(arrays, labels, source=str(path))


def _load_folder(folder: Path) -> DataSet:
    npz_files = sorted(folder.glob("*.npz"))
    npy_files = sorted(folder.glob("*.npy"))
    if npz_files and npy_files:
        raise InputError(f"data folder {folder} mixes .npz and .npy files; use one kind")
    if npz_files:
        parts = [_load_npz(f) for f in npz_files]
        keys = set(parts[0].inputs)
        for part in parts[1:]:
            if set(part.inputs) != keys:
                raise InputError(f"data folder {folder}: {part.source} has keys {sorted(part.inputs)}, expected {sorted(keys)}")
        inputs = {k: np.concatenate([p.inputs[k] for p in parts]) for k in keys}
        has_labels = [p.labels is not None for p in parts]
        if any(has_labels) and not all(has_labels):
            raise InputError(f"data folder {folder}: some files have 'labels' and some do not")
        labels = np.concatenate([p.labels for p in parts]) if all(has_labels) else None
        return DataSet(inputs, labels, source=str(folder))
    if npy_files:
        arrays = {f.stem: np.load(f, allow_pickle=False) for f in npy_files}
        labels = arrays.pop(LABELS_KEY, None)
        return DataSet(arrays, labels, source=str(folder))
    raise InputError(f"data folder {folder} holds no .npz or .npy files")


PROBE_FEATURE_DIM = 64
"""Size of a dynamic non-batch dim of a float input of rank ≥ 3 in probe data (image height / width,
frames): a multiple of 32 large enough that a stride-32 CNN with an FPN neck still has 2×2 maps
(at 1×1 a PP-OCR detector's upsampled and lateral maps disagree in size and ORT fails)."""
PROBE_OTHER_DIM = 16
"""Size of every other dynamic non-batch dim (a token sequence length, a rank-2 feature count)."""


def probe_data(specs: Sequence[InputSpec], count: int = 8, seed: int = 0,
               dim_overrides: dict[str, tuple[int, ...]] | None = None) -> DataSet:
    """Synthetic inputs for checks when the user gave no data: standard normal floats, small
    non-negative integers (valid token ids / indices / masks); a dynamic batch dim is ``count``,
    other dynamic dims :data:`PROBE_FEATURE_DIM` (float inputs of rank ≥ 3) or :data:`PROBE_OTHER_DIM`."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for spec in specs:
        shape = list((dim_overrides or {}).get(spec.name, ()))
        if not shape:
            dynamic = PROBE_FEATURE_DIM if spec.dtype.kind == "f" and len(spec.shape) >= 3 else PROBE_OTHER_DIM
            shape = [d if isinstance(d, int) else dynamic for d in spec.shape]
            if shape and not isinstance(spec.shape[0], int):
                shape[0] = count
        if spec.shape and isinstance(spec.shape[0], int):
            reps = count // max(spec.shape[0], 1) or 1
            shape[0] = spec.shape[0] * reps
        if spec.dtype.kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        elif spec.dtype.kind in "iu":
            array = np.ones(shape, dtype=spec.dtype)
        else:
            raise InputError(f"cannot generate probe data for input '{spec.name}' of dtype {spec.dtype}")
        inputs[spec.name] = array
    return DataSet(inputs, None, source="<probe inputs>", synthetic=True)
