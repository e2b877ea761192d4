"""Teacher outputs on the training data: computed once with onnxruntime, streamed to disk, cached.

The teacher runs batch by batch and each batch's outputs are written straight into one ``.npy`` file
per output (``numpy.lib.format.open_memmap``), so a large data set's logits are never held in memory
— training reads them back memory-mapped, batch by batch.

Cache: ``<cache dir>/distill-teacher/<key>/`` with ``key = sha256(teacher model hash, training data
fingerprint, onnxruntime version)``. The folder is written under a temporary name and renamed when
complete, so an interrupted run leaves no entry that a later run would trust. Without a cache directory
(``--no-cache``) the files live in a temporary folder deleted after the pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.console import track
from graphopt.data import DataSet, input_specs
from graphopt.engines import ort as ort_engine
from graphopt.model_io import model_hash

CACHE_FOLDER = "distill-teacher"


def cache_key(teacher: ir.Model, data: DataSet) -> str:
    import onnxruntime

    payload = json.dumps({"teacher": model_hash(teacher), "data": data.fingerprint(),
                          "onnxruntime": onnxruntime.__version__}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def run_teacher(teacher: ir.Model, data: DataSet) -> dict[str, np.ndarray]:
    """The teacher's outputs on a small data set (evaluation data), in memory."""
    engine = ort_engine.build(teacher)
    return engine.run_batches(data.batches(data.batch_size_for(input_specs(teacher))), data.join)


@contextlib.contextmanager
def teacher_outputs(teacher: ir.Model, data: DataSet, cache_root: Path | None) -> Iterator[tuple[dict[str, np.ndarray], bool]]:
    """Yield ``({output: read-only memory-mapped array}, from_cache)`` for ``data``."""
    if cache_root is None:
        with tempfile.TemporaryDirectory(prefix="graphopt-teacher-") as folder:
            yield _write(teacher, data, Path(folder) / "outputs"), False
        return
    final = Path(cache_root) / CACHE_FOLDER / cache_key(teacher, data)
    cached = None
    if (final / "outputs.json").exists():
        try:
            cached = _read(final)
            if any(len(array) != len(data) for array in cached.values()):
                cached = None
        except Exception:  # a damaged entry is a miss, never an error
            cached = None
    if cached is not None:
        yield cached, True
        return
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    try:
        _write(teacher, data, partial)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    yield _read(final), False


def _write(teacher: ir.Model, data: DataSet, folder: Path) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    engine = ort_engine.build(teacher)
    batch = data.batch_size_for(input_specs(teacher))
    files: dict[str, np.ndarray] = {}
    names = {name: f"output_{i}.npy" for i, name in enumerate(engine.output_names)}
    start = 0
    steps = (len(data) + batch - 1) // batch
    for feeds in track(data.batches(batch), "teacher outputs", total=steps):
        outputs = engine.run(feeds)
        count = len(next(iter(feeds.values())))
        for name, value in outputs.items():
            value = np.asarray(value)
            if name not in files:
                files[name] = np.lib.format.open_memmap(folder / names[name], mode="w+", dtype=value.dtype,
                                                        shape=(len(data), *value.shape[1:]))
            if value.shape[1:] != files[name].shape[1:]:
                raise ValueError(f"teacher output '{name}' changes shape between batches "
                                 f"({files[name].shape[1:]} vs {value.shape[1:]}); pad the training data")
            files[name][start:start + count] = value
        start += count
    for array in files.values():
        array.flush()
    (folder / "outputs.json").write_text(json.dumps(names))
    return _read(folder)


def _read(folder: Path) -> dict[str, np.ndarray]:
    names = json.loads((folder / "outputs.json").read_text())
    return {name: np.load(folder / file, mmap_mode="r") for name, file in names.items()}
