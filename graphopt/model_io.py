"""Loading, normalising, hashing and atomically saving ONNX models.

Rules:
* Inside graphopt a model is an ``onnx_ir.Model``; ``ModelProto`` only appears at the edges.
* Saving never writes over the input file, always goes through a temporary file in the
  destination folder followed by ``os.replace`` (atomic on POSIX), and removes the temporary
  file on any failure, Ctrl-C included.
* Models whose serialized size would exceed protobuf's 2 GB limit are saved with external data.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt.errors import InputError, first_line
from graphopt.sparse_initializers import STORE_SPARSE_KEY, to_sparse

PROTOBUF_LIMIT_BYTES = 2 * 1024**3 - 1
DEFAULT_OPSET = 17
"""Opset that old models (< 13) are upgraded to when a pass needs a newer one."""

ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model


def load_model(source: ModelLike) -> ir.Model:
    """Load a model from a path, a ``ModelProto`` or an ``ir.Model`` (returned as is).

    External data next to the file is loaded. Raises :class:`InputError` with one line that
    names the problem for a missing, empty, truncated or non-ONNX file.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        return ir.from_proto(source)
    path = Path(source)
    return ir.from_proto(load_proto(path))


def load_proto(path: Path) -> onnx.ModelProto:
    """Read a ``ModelProto`` from ``path`` with one-line errors for every way a file can be bad."""
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if path.is_dir():
        raise InputError(f"model path is a folder, not an ONNX file: {path}")
    if path.stat().st_size == 0:
        raise InputError(f"model file is empty: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError or RuntimeError for junk bytes
        raise InputError(f"not a valid ONNX file (corrupt or truncated?): {path}: {first_line(exc)}") from exc
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise InputError(f"not a valid ONNX file (no graph inside): {path}")
    if not proto.opset_import:
        raise InputError(f"not a valid ONNX file (no opset import): {path}")
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:
        raise InputError(f"cannot read the external data of {path}: {first_line(exc)}") from exc
    if proto.graph.sparse_initializer:  # onnx_ir keeps dense tensors only
        from graphopt.sparse_initializers import to_dense

        to_dense(proto)
    return proto


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a fresh ``ModelProto`` (safe to hand to libraries that mutate it)."""
    return ir.to_proto(model)


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model``."""
    return model.clone()


def model_hash(model: ir.Model | onnx.ModelProto) -> str:
    """SHA-256 of the deterministic serialization: identical graphs and weights give identical hashes."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    digest = hashlib.sha256()
    digest.update(proto.SerializeToString(deterministic=True))
    return digest.hexdigest()


def file_hash(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def initializer_bytes(model: ir.Model) -> int:
    """Total bytes of the main graph's initializers (what dominates a model's file size)."""
    return sum(v.const_value.nbytes for v in model.graph.initializers.values() if v.const_value is not None)


def same_file(a: Path, b: Path) -> bool:
    """True when two paths name the same file (also through symlinks / different spellings)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def check_output_path(output: Path, input_path: Path | None) -> None:
    """Refuse outputs that would destroy the input or cannot be written, before any work starts."""
    if input_path is not None and same_file(output, input_path):
        raise InputError(f"output path is the input file; refusing to overwrite it: {output}")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.exists():
        raise InputError(f"output folder does not exist: {folder}")
    if not folder.is_dir():
        raise InputError(f"output folder is not a folder: {folder}")
    if output.is_dir():
        raise InputError(f"output path is a folder: {output}")
    try:  # a real write probe: permission bits alone say nothing for root or read-only mounts
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"output folder is not writable: {folder} ({exc.strerror or exc})") from exc


def save_model(model: ir.Model | onnx.ModelProto, output: str | os.PathLike, *, input_path: Path | None = None) -> Path:
    """Write ``model`` to ``output`` atomically.

    The bytes go to a temporary file in the destination folder, which is renamed over the
    destination only once complete. External data (``<name>.data``) is used when the model is
    larger than protobuf's 2 GB limit. ``input_path`` guards against overwriting the input.
    Initializers listed under :data:`~graphopt.sparse_initializers.STORE_SPARSE_KEY` in the
    model's metadata are written as sparse initializers.
    """
    output = Path(output)
    check_output_path(output, input_path)
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    if proto is not model and any(e.key == STORE_SPARSE_KEY for e in proto.metadata_props):
        to_sparse(proto)  # weights a pass asked to store as sparse initializers
    needs_external = proto.ByteSize() > PROTOBUF_LIMIT_BYTES if _small_enough_to_size(proto) else True
    if needs_external and proto is model:  # onnx moves the weights out of the proto it saves: copy first
        proto = onnx.ModelProto()
        proto.CopyFrom(model)
    try:
        _write(proto, output, needs_external)
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output


def _write(proto: onnx.ModelProto, output: Path, needs_external: bool) -> None:
    with _atomic_target(output) as tmp_path:
        if needs_external:
            data_name = output.name + ".data"
            tmp_data = output.parent / (tmp_path.name + ".data")
            try:
                onnx.save_model(
                    proto, str(tmp_path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=tmp_data.name, size_threshold=1024,
                )
                # Point the graph at the final data file name, then rename the data file too.
                _relocate_external_data(tmp_path, tmp_data.name, data_name)
                os.replace(tmp_data, output.parent / data_name)
            finally:
                if tmp_data.exists():
                    tmp_data.unlink()
        else:
            with open(tmp_path, "wb") as handle:
                handle.write(proto.SerializeToString())
                handle.flush()
                os.fsync(handle.fileno())


def _small_enough_to_size(proto: onnx.ModelProto) -> bool:
    """``ByteSize`` itself overflows past 2 GB in some protobuf builds; estimate from raw tensors first."""
    raw = sum(len(t.raw_data) for t in proto.graph.initializer)
    return raw < PROTOBUF_LIMIT_BYTES


def _relocate_external_data(model_path: Path, old_location: str, new_location: str) -> None:
    proto = onnx.load(str(model_path), load_external_data=False)
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old_location:
                entry.value = new_location
    with open(model_path, "wb") as handle:
        handle.write(proto.SerializeToString())


@contextlib.contextmanager
def _atomic_target(output: Path) -> Iterator[Path]:
    """Yield a temp path beside ``output``; rename it over ``output`` on success, delete it otherwise."""
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp_path = Path(name)
    try:
        yield tmp_path
        os.replace(tmp_path, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def opset_version(model: ir.Model) -> int:
    """The default-domain opset the model imports."""
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


def upgrade_opset(model: ir.Model, target: int = DEFAULT_OPSET) -> ir.Model:
    """Convert a model to opset ``target`` with onnx's version converter (used for opset < 13)."""
    try:
        converted = onnx.version_converter.convert_version(ir.to_proto(model), target)
    except Exception as exc:
        raise InputError(f"cannot upgrade the model from opset {opset_version(model)} to {target}: {first_line(exc)}") from exc
    return ir.from_proto(converted)


def normalize_model(model: ir.Model) -> list[str]:
    """Bring old or exported models into the form the passes expect; return what was changed.

    * initializers also listed as graph inputs (IR < 4 exporters) are removed from the inputs,
      so passes may treat them as constants;
    * weights held in ``Constant`` nodes are lifted to initializers so pruning and quantization
      see them.
    """
    notes: list[str] = []
    init_names = set(model.graph.initializers)
    as_inputs = [v.name for v in model.graph.inputs if v.name in init_names]
    if as_inputs:
        ir_common.RemoveInitializersFromInputsPass()(model)
        notes.append(f"{len(as_inputs)} initializers were also graph inputs; removed from the inputs")
    constants = sum(1 for n in model.graph if n.op_type == "Constant" and n.domain in ("", "ai.onnx"))
    if constants:
        before = len(model.graph.initializers)
        ir_common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        lifted = len(model.graph.initializers) - before
        if lifted:
            notes.append(f"{lifted} Constant nodes lifted to initializers")
    return notes


def custom_domains(model: ir.Model) -> set[str]:
    """Op domains that onnxruntime does not know natively (custom ops)."""
    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training", "ai.onnx.training"}
    used = {node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    function_domains = {key[0] for key in model.functions}
    return {d for d in used if d not in known and d not in function_domains}

