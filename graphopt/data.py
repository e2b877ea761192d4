"""Calibration / evaluation data: ``.npz`` files or folders of them, checked against the model.

Format: keys are the model's input names, an optional ``labels`` key holds integer class labels (one
per sample). A folder may hold several ``.npz`` files (concatenated in name order) or one
``<input_name>.npy`` per input plus an optional ``labels.npy``.

**Samples and the batch axis** (:func:`batch_axis`). Static dims are honoured exactly; only symbolic
dims take chosen sizes. How samples map onto the model's inputs depends on their leading dims:

* **dynamic batch** — every input's leading dim is the same symbolic dim (the same ``dim_param``,
  or all of them unnamed): axis 0 of every array indexes samples, and a feed takes any number of
  them (16 by default);
* **fixed batch** — every input's leading dim is the same static size ``B`` (an export at batch 1):
  axis 0 still indexes samples, the data holds a multiple of ``B`` and each feed takes exactly ``B``;
* **no shared batch axis** — anything else (leading dims that differ, such as ``A (8, 6) @ B (6, N)``,
  different ``dim_param`` names, a scalar input): each sample is one whole feed. An array with exactly
  the input's rank *is* that input (a file with one sample); an array with one more axis is a stack
  of inputs along a new axis 0 (one sample per entry). All arrays take the same form; outputs are
  stacked along a new axis 0 the same way, so ``labels`` (if any) are one per feed.

Every array is checked against the model before any pass runs (:meth:`DataSet.check_against`):
names, dtypes, ranks, static dims, sizes of a symbolic dim shared by several inputs, sample counts,
and finiteness. A mismatch raises :class:`InputError` naming the input, the shape given and the shape
expected.

**Probe inputs** (:func:`probe_data`, when the user gave no data): the same layout rule; the dynamic
batch axis takes the sample count, a symbolic leading dim without a shared batch axis 1 (one sample
per feed), every other symbolic dim :data:`PROBE_FEATURE_DIM` or :data:`PROBE_OTHER_DIM` — one size
per ``dim_param`` name, so inputs that share a symbolic dim agree on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError

LABELS_KEY = "labels"
Dim = int | str | None


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype and shape (``str``/``None`` for dynamic dims; ``()`` and
    ``ranked`` False when the model does not declare the rank)."""

    name: str
    dtype: np.dtype
    shape: tuple[Dim, ...]
    ranked: bool = True

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
        specs.append(InputSpec(value.name, np.dtype(dtype), shape, ranked=value.shape is not None))
    return specs


@dataclasses.dataclass(frozen=True)
class BatchAxis:
    """How samples map onto a model's inputs (the rule in the module docstring).

    ``dynamic``: a shared symbolic leading dim (``name``, ``None`` when unnamed) — feeds of any size;
    ``fixed``: a shared static leading dim of ``size`` — feeds of exactly ``size`` samples;
    ``none``: no shared batch axis — every feed is one sample."""

    kind: Literal["dynamic", "fixed", "none"]
    size: int | None = None
    name: str | None = None

    @property
    def stacked(self) -> bool:
        """Whether data for this model carries an added sample axis (one feed per sample)."""
        return self.kind == "none"

    def describe(self) -> str:
        if self.kind == "dynamic":
            return f"batch axis {self.name}" if self.name else "an unnamed batch axis"
        if self.kind == "fixed":
            return f"a fixed batch of {self.size}"
        return "no shared batch axis"


def batch_axis(specs: Sequence[InputSpec]) -> BatchAxis:
    """The model's batch axis: its inputs' shared leading dim, if they have one (module docstring)."""
    if not specs:
        return BatchAxis("dynamic")
    if any(not spec.shape and spec.ranked for spec in specs):
        return BatchAxis("none")
    leading = {spec.shape[0] if spec.ranked else None for spec in specs}  # an undeclared rank: an unnamed dim
    if len(leading) > 1:
        return BatchAxis("none")
    dim = leading.pop()
    if isinstance(dim, int):
        return BatchAxis("fixed", size=dim)
    return BatchAxis("dynamic", name=dim)


def leading_dims(specs: Sequence[InputSpec]) -> str:
    """``A 8, B 6`` — the inputs' leading dims, for messages."""
    def first(spec: InputSpec) -> str:
        if not spec.shape:
            return "scalar" if spec.ranked else "?"
        return "?" if spec.shape[0] is None else str(spec.shape[0])

    return ", ".join(f"{spec.name} {first(spec)}" for spec in specs)


@dataclasses.dataclass
class DataSet:
    """Samples for every model input and optional labels.

    ``stacked`` False: axis 0 of every array is the model's own batch axis (samples are rows, a feed is
    a slice of them). ``stacked`` True: axis 0 is an added sample axis and every sample is one whole
    feed (a model with no shared batch axis; module docstring). Data read from a file is matched to a
    model — its layout chosen, its counts and shapes checked — by :meth:`check_against`."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = "<memory>"
    synthetic: bool = False
    stacked: bool = False
    fixed_batch: int | None = None
    """Rows per feed the model takes exactly (its inputs' static leading dim), once matched to it:
    :meth:`take` keeps whole feeds."""

    def __post_init__(self) -> None:
        if self.stacked:
            self._check_counts()

    def _check_counts(self) -> None:
        counts = {name: (len(array) if np.ndim(array) else "scalar") for name, array in self.inputs.items()}
        if self.labels is not None:
            counts[LABELS_KEY] = len(self.labels) if np.ndim(self.labels) else "scalar"
        if len(set(counts.values())) > 1 or "scalar" in counts.values():
            axis = "the added sample axis 0" if self.stacked else "axis 0"
            raise InputError(f"{self.source}: arrays disagree on the number of samples ({axis}): {counts}")

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Yield feeds of at most ``batch_size`` samples, in order (stacked data: one sample per feed)."""
        if self.stacked:
            for index in range(len(self)):
                yield {name: array[index, ...] for name, array in self.inputs.items()}
            return
        for start in range(0, len(self), batch_size):
            yield {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def feed(self, sample: int, batch_size: int) -> dict[str, np.ndarray]:
        """The feed of :meth:`batches` that holds ``sample``."""
        if self.stacked:
            return {name: array[sample, ...] for name, array in self.inputs.items()}
        start = (sample // batch_size) * batch_size
        return {name: array[start : start + batch_size] for name, array in self.inputs.items()}

    def take(self, count: int) -> DataSet:
        """The first ``count`` samples (all of them when fewer), rounded up to whole feeds of a model with
        a fixed batch (a model that takes exactly 4 rows gets 4, not 2)."""
        if self.fixed_batch and not self.stacked:
            count = -(-count // self.fixed_batch) * self.fixed_batch
        labels = None if self.labels is None else self.labels[:count]
        return DataSet({k: v[:count] for k, v in self.inputs.items()}, labels, self.source, self.synthetic,
                       self.stacked, self.fixed_batch)

    def join(self, parts: Sequence[np.ndarray]) -> np.ndarray:
        """One output from its per-feed ``parts``: concatenated along the batch axis, or stacked along a
        new sample axis for stacked data (and for scalar outputs)."""
        if self.stacked or np.ndim(parts[0]) == 0:
            return np.stack(parts)
        return np.concatenate(parts, axis=0)

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
        if self.stacked:
            digest.update(b"stacked")
        return digest.hexdigest()

    def batch_size_for(self, specs: Sequence[InputSpec], preferred: int = 16) -> int:
        """Samples per feed: exactly the fixed batch, one for stacked data, else ``preferred``."""
        axis = batch_axis(specs)
        if self.stacked or axis.stacked:
            return 1
        return axis.size if axis.kind == "fixed" and axis.size else preferred

    def check_against(self, specs: Sequence[InputSpec], role: str, *, any_float: bool = False) -> DataSet:
        """This data matched to the model's inputs (stacked when they share no batch axis, module
        docstring); raises :class:`InputError` (one line) unless it fits. ``any_float``: accept any
        float dtype for a float input (the caller casts, as ``graphopt profile`` does)."""
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
        axis = batch_axis(specs)
        data = self._laid_out(specs, axis, role)
        if len(data) == 0:
            raise InputError(f"{role} data {self.source} holds no samples")
        data._check_counts()
        sizes: dict[str, tuple[int, str]] = {}
        for spec in specs:
            array = data.inputs[spec.name]
            feed_shape = array.shape[1:] if data.stacked else array.shape
            where = f"{role} data {self.source} has input '{spec.name}'"
            shown = "(" + ", ".join(map(str, feed_shape)) + ")"
            if array.dtype != spec.dtype and not (any_float and array.dtype.kind == spec.dtype.kind == "f"):
                raise InputError(f"{where} of dtype {array.dtype} but the model expects {spec.dtype}")
            mismatch = (spec.ranked and len(feed_shape) != len(spec.shape)) or any(
                isinstance(dim, int) and feed_shape[i] != dim for i, dim in enumerate(spec.shape)
                if data.stacked or i > 0)
            if mismatch:
                per = " per sample" if data.stacked else ""
                raise InputError(f"{where} of shape {shown}{per} but the model expects {spec.describe()}")
            for i, dim in enumerate(spec.shape):
                if isinstance(dim, str) and i < len(feed_shape) and (data.stacked or i > 0):
                    size, owner = sizes.setdefault(dim, (feed_shape[i], spec.name))
                    if size != feed_shape[i]:
                        raise InputError(f"{where} with dim {i} ({dim}) = {feed_shape[i]}, but input '{owner}' "
                                         f"has {dim} = {size}; inputs that share a symbolic dim must agree on it")
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int((~np.isfinite(array)).sum())
                raise InputError(f"{where} with {bad} NaN/Inf value(s); clean the data first")
        if axis.kind == "fixed" and axis.size and len(data) % axis.size:
            raise InputError(f"{role} data {self.source} has {len(data)} samples, but the model takes exactly "
                             f"{axis.size} at a time (its inputs' leading dim); give a multiple of {axis.size}")
        if data.labels is not None and data.labels.dtype.kind not in "iu":
            raise InputError(f"{role} data {self.source}: 'labels' must be integers, got {data.labels.dtype}")
        if axis.kind == "fixed" and axis.size and not data.stacked:
            data = dataclasses.replace(data, fixed_batch=axis.size)
        return data

    def _laid_out(self, specs: Sequence[InputSpec], axis: BatchAxis, role: str) -> DataSet:
        """``self`` in the layout ``axis`` needs: stacked (adding the sample axis to arrays that are one
        feed as they are) when the inputs share no batch axis."""
        if not axis.stacked:
            if self.stacked:
                raise InputError(f"{role} data {self.source} is stacked one feed per sample, but the model's "
                                 f"inputs share {axis.describe()}; give samples along axis 0")
            return self
        if self.stacked:
            return self
        extra = {spec.name: np.ndim(self.inputs[spec.name]) - len(spec.shape) for spec in specs if spec.ranked}
        if set(extra.values()) not in ({0}, {1}):
            shapes = ", ".join(f"{s.name} {np.shape(self.inputs[s.name])} for {s.describe()}" for s in specs)
            raise InputError(f"{role} data {self.source}: the model's inputs share no batch axis (leading dims "
                             f"{leading_dims(specs)}), so each array must be one input as the model takes it, or "
                             f"a stack of them along a new axis 0, all alike; got {shapes}")
        one_feed = extra and set(extra.values()) == {0}
        inputs = {k: (np.asarray(v)[None] if one_feed else v) for k, v in self.inputs.items()}
        labels = self.labels
        if one_feed and labels is not None and np.ndim(labels) == 0:
            labels = np.asarray(labels)[None]
        return DataSet(inputs, labels, self.source, self.synthetic, stacked=True)


def load_data(path: str | Path) -> DataSet:
    """Read a ``.npz`` file, a ``.npy``-per-input folder or a folder of ``.npz`` files (as given: matched
    to a model by :meth:`DataSet.check_against`)."""
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
        for key in sorted(keys):
            if len({p.inputs[key].ndim for p in parts}) > 1 or not parts[0].inputs[key].ndim:
                raise InputError(f"data folder {folder}: '{key}' cannot be concatenated along axis 0 across files "
                                 f"(shapes {', '.join(str(p.inputs[key].shape) for p in parts)})")
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


def probe_dim(spec: InputSpec, axis: int) -> int:
    """The probe size of symbolic dim ``axis`` of ``spec`` when it is not a batch axis (module docstring)."""
    if axis == 0:
        return 1
    return PROBE_FEATURE_DIM if spec.dtype.kind == "f" and len(spec.shape) >= 3 else PROBE_OTHER_DIM


def feed_shapes(specs: Sequence[InputSpec], batch: int = 1,
                known: dict[str, Sequence[int]] | None = None) -> dict[str, tuple[int, ...]]:
    """The shape of one feed for every input: static dims as declared, the dynamic batch axis
    ``batch``, and every other symbolic dim from ``known`` (feed shapes, e.g. of real data) or the probe
    size — one size per ``dim_param`` name across all inputs."""
    axis = batch_axis(specs)
    named: dict[str, int] = {}
    for spec in specs:  # sizes the known shapes fix for named dims
        shape = (known or {}).get(spec.name)
        if shape is not None and len(shape) == len(spec.shape):
            for i, dim in enumerate(spec.shape):
                if isinstance(dim, str) and not (i == 0 and axis.kind == "dynamic"):
                    named.setdefault(dim, int(shape[i]))
    shapes = {}
    for spec in specs:
        given = (known or {}).get(spec.name)
        dims = []
        for i, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                dims.append(dim)
            elif i == 0 and axis.kind == "dynamic":
                dims.append(batch)
            elif given is not None and len(given) == len(spec.shape):
                dims.append(int(given[i]))
            elif isinstance(dim, str):
                dims.append(named.setdefault(dim, probe_dim(spec, i)))
            else:
                dims.append(probe_dim(spec, i))
        shapes[spec.name] = tuple(dims)
    return shapes


def probe_data(specs: Sequence[InputSpec], count: int = 8, seed: int = 0,
               dim_overrides: dict[str, tuple[int, ...]] | None = None) -> DataSet:
    """Synthetic inputs for checks when the user gave no data: standard normal floats, small
    non-negative integers (valid token ids / indices / masks), at :func:`feed_shapes`.

    ``count`` samples: a dynamic batch axis of ``count``; a fixed batch ``B`` repeated to ``count``
    rows (at least one feed of ``B``); with no shared batch axis, ``count`` feeds stacked along a new
    axis 0. ``dim_overrides`` gives some inputs' feed shapes (their batch axis is then ``count``)."""
    rng = np.random.default_rng(seed)
    axis = batch_axis(specs)
    shapes = feed_shapes(specs, count, dim_overrides)
    inputs = {}
    for spec in specs:
        shape = list(shapes[spec.name])
        if axis.kind == "dynamic" and shape:
            shape[0] = count
        elif axis.kind == "fixed" and shape:
            shape[0] = shape[0] * max(count // max(shape[0], 1), 1)
        elif axis.stacked:
            shape = [count, *shape]
        if spec.dtype.kind == "f":
            array = rng.standard_normal(shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            array = rng.integers(0, 2, shape).astype(bool)
        elif spec.dtype.kind in "iu":
            array = np.ones(shape, dtype=spec.dtype)
        else:
            raise InputError(f"cannot generate probe data for input '{spec.name}' of dtype {spec.dtype}")
        inputs[spec.name] = array
    fixed = axis.size if axis.kind == "fixed" and axis.size else None
    return DataSet(inputs, None, source="<probe inputs>", synthetic=True, stacked=axis.stacked, fixed_batch=fixed)
