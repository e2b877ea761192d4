"""Write the reference artifacts (``.onnx`` models and ``.npz`` data) reproducibly and atomically.

Two rules hold for every file written here:

* **Atomic.** Bytes go to a temporary file in the destination folder, which is then renamed over the target,
  so an interrupted build never leaves a half-written artifact that a later idempotent build would trust.
* **Byte-stable.** ``numpy.savez`` stamps each member with the current time; :func:`write_npz` writes the
  same ``.npz`` layout with a fixed timestamp and no compression, so equal arrays give equal bytes.

Only numpy and the standard library are imported at module level; onnx and torch are imported by the
functions that need them.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The opset every torch-built reference model is exported with.
OPSET = 17

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; artifacts are ordinary readable files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> Path:
    """Save ``arrays`` as an ``.npz`` that ``numpy.load`` reads, with byte-identical output for equal input.

    Members are written in the given key order, uncompressed, with a fixed 1980-01-01 timestamp.
    """
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    return write_bytes_atomic(path, buf.getvalue())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file into memory (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def npz_paths(out_dir: Path, stem: str) -> tuple[Path, Path]:
    """The ``(calib, eval)`` data file paths of model ``stem`` in ``out_dir``."""
    return Path(out_dir) / f"{stem}_calib.npz", Path(out_dir) / f"{stem}_eval.npz"


def drop_unused_nodes(model: Any) -> Any:
    """Remove nodes whose outputs nothing reads, and initializers nothing reads, from an ``onnx.ModelProto``.

    The TorchScript exporter leaves dangling ``Identity`` nodes behind when it keeps BatchNormalization;
    they are exporter debris, not part of the network, so the reference models ship without them.
    """
    graph = model.graph
    graph_outputs = {o.name for o in graph.output}
    changed = True
    while changed:
        used = set(graph_outputs)
        for node in graph.node:
            used.update(i for i in node.input if i)
        keep = [n for n in graph.node if any(o in used for o in n.output)]
        changed = len(keep) != len(graph.node)
        if changed:
            del graph.node[:]
            graph.node.extend(keep)
    used = set(graph_outputs)
    for node in graph.node:
        used.update(node.input)
    keep_init = [t for t in graph.initializer if t.name in used]
    if len(keep_init) != len(graph.initializer):
        del graph.initializer[:]
        graph.initializer.extend(keep_init)
    return model


def export_torch(
    module: Any,
    args: tuple[Any, ...],
    path: Path,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Mapping[str, Mapping[int, str]],
    doc_string: str = "",
    keep_batchnorm: bool = True,
) -> Path:
    """Export an eval-mode torch module to a single self-contained ONNX file (opset :data:`OPSET`).

    Uses the TorchScript exporter (``dynamo=False``): it needs no ``onnxscript`` and, with
    ``training=PRESERVE`` on an eval-mode module, keeps BatchNormalization as its own node instead of
    folding it into the Conv (folding is a job for graphopt's simplify pass). ``keep_batchnorm=False``
    exports with ``torch.onnx.export``'s default ``TrainingMode.EVAL`` instead, as users do: the exporter
    folds each BN that follows a Conv into it. The result is checked with
    the onnx checker, must fit in one file (no external data) and is written atomically.
    """
    import onnx
    import torch

    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy-exporter deprecation notice and tracer warnings
        torch.onnx.export(
            module,
            args,
            buf,
            dynamo=False,
            opset_version=OPSET,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={k: dict(v) for k, v in dynamic_axes.items()},
            training=torch.onnx.TrainingMode.PRESERVE if keep_batchnorm else torch.onnx.TrainingMode.EVAL,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    drop_unused_nodes(model)
    model.doc_string = doc_string
    if [o.name for o in model.graph.output] != list(output_names):
        raise RuntimeError(f"exported outputs {[o.name for o in model.graph.output]} != {list(output_names)}")
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    return write_bytes_atomic(path, data)
