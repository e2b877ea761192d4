"""Loading, normalising, hashing and atomically saving ONNX models.

Rules:
* Inside graphopt a model is an ``onnx_ir.Model``; ``ModelProto`` only appears at the edges.
* Saving never writes over the input file, always goes through a temporary file in the
  destination folder followed by ``os.replace`` (atomic on POSIX), and removes the temporary
  file on any failure, Ctrl-C included.
* Models whose weights reach protobuf's 2 GB limit are saved with external data; weights in
  external data are memory-mapped, never copied into one proto (:mod:`graphopt.large`).
* Written files get the mode any new file gets under the user's umask.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt import large
from graphopt.errors import InputError, first_line
from graphopt.sparse_initializers import STORE_SPARSE_KEY, to_sparse

DEFAULT_OPSET = 17
"""Opset that old models (< 13) are upgraded to when a pass needs a newer one."""

ModelLike = str | os.PathLike | onnx.ModelProto | ir.Model


def load_model(source: ModelLike) -> ir.Model:
    """Load a model from a path, a ``ModelProto`` or an ``ir.Model`` (returned as is).

    Weights in external data files stay there: they are memory-mapped when first read
    (:mod:`graphopt.large`), so loading a 10 GB model costs no more than its graph. Raises
    :class:`InputError` with one line that names the problem for a missing, empty, truncated or
    non-ONNX file, and for external data that is missing or shorter than the model says.
    """
    if isinstance(source, ir.Model):
        return source
    if isinstance(source, onnx.ModelProto):
        return ir.from_proto(source)
    path = Path(source)
    model = ir.serde.deserialize_model(load_proto(path))
    ir.external_data.set_base_dir(model.graph, path.parent)
    _check_external_data(model, path)
    return model


def load_proto(path: Path) -> onnx.ModelProto:
    """Read a ``ModelProto`` from ``path`` (external data not loaded) with one-line errors for every
    way a file can be bad."""
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
    if proto.graph.sparse_initializer:  # onnx_ir keeps dense tensors only
        from graphopt.sparse_initializers import to_dense

        to_dense(proto)
    return proto


def _check_external_data(model: ir.Model, path: Path) -> None:
    """Every external tensor's file exists beside the model and holds the bytes it points at."""
    sizes: dict[str, int] = {}
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if not isinstance(tensor, ir.ExternalTensor):
                continue
            location = Path(tensor.path)
            if str(location) not in sizes:
                if not location.is_file():
                    raise InputError(f"cannot read the external data of {path}: '{tensor.location}' "
                                     f"(for '{value.name}') is not a file beside the model")
                sizes[str(location)] = location.stat().st_size
            end = (tensor.offset or 0) + (tensor.length if tensor.length is not None else tensor.nbytes)
            if end > sizes[str(location)]:
                raise InputError(f"cannot read the external data of {path}: '{tensor.location}' ends at byte "
                                 f"{sizes[str(location)]:,} but '{value.name}' needs bytes up to {end:,} (truncated?)")


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize to a fresh ``ModelProto`` (safe to hand to libraries that mutate it)."""
    return ir.to_proto(model)


def copy_model(model: ir.Model) -> ir.Model:
    """A deep copy of ``model``."""
    return model.clone()


def model_hash(model: ir.Model | onnx.ModelProto) -> str:
    """SHA-256 of a model's content: identical graphs and weights give identical hashes.

    Hashed: the deterministic serialization of the graph with every initializer replaced by a
    numbered placeholder, then each initializer's name, type, shape and bytes, streamed from where
    they lie (a memory-mapped file, an array). No proto of the whole model is made: protobuf cannot
    serialize one over 2 GB, and it would copy every weight.
    """
    model = model if isinstance(model, ir.Model) else ir.from_proto(model)
    store = large.WeightStore()
    skeleton = large.detach(model, store, min_bytes=0)
    digest = hashlib.sha256(skeleton.SerializeToString(deterministic=True))
    for name, tensor in large.placeholders(skeleton).items():
        source = store.source(tensor.external_data[0].value)
        digest.update(f"{name}:{source.dtype.name}:{tuple(source.shape)}".encode())
        for part in _tensor_bytes(source):
            digest.update(part)
    return digest.hexdigest()


def _tensor_bytes(tensor: ir.TensorProtocol) -> Iterator[memoryview | bytes]:
    """The tensor's bytes as stored, a chunk at a time (read through the page cache for a weight in
    a file: no mapping, no copy of the whole tensor)."""
    if tensor.dtype.bitwidth < 8:  # packed 4-bit and 2-bit types: small, hash the packed bytes
        yield tensor.tobytes()
        return
    for chunk in large.chunks(tensor):
        yield memoryview(np.ascontiguousarray(chunk).view(np.uint8))


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


def save_model(model: ir.Model | onnx.ModelProto, output: str | os.PathLike, *, input_path: Path | None = None,
               external_data: bool | None = None) -> Path:
    """Write ``model`` to ``output`` atomically.

    The bytes go to temporary files in the destination folder, renamed over the destination only
    once complete. A model whose weights reach :data:`graphopt.large.LARGE_MODEL_BYTES` (protobuf's
    limit), or whose weights lie in files (it came with external data, or a pass converted weights
    of such a model), is written with its weights in ``<name>.data`` beside it, copied file to file
    tensor by tensor (64 KiB-aligned, so onnxruntime can map them): no weight passes through memory.
    ``external_data=True`` asks for that layout whatever the size (``optimize`` does when the input
    came with external data). The files get the mode any new file gets under the user's umask.
    ``input_path`` guards against overwriting the input. Initializers listed under
    :data:`~graphopt.sparse_initializers.STORE_SPARSE_KEY` in the model's metadata are written as
    sparse initializers (inline models only: onnx's external data has no sparse form).
    """
    output = Path(output)
    check_output_path(output, input_path)
    model = model if isinstance(model, ir.Model) else ir.from_proto(model)
    from graphopt.opset_upgrade import settle_ir_version

    settle_ir_version(model)  # whatever IR version is written, the model satisfies its rules
    try:
        if external_data or large.is_large(model) or large.has_external_weights(model):
            _write_with_external_data(model, output)
        else:
            proto = large.inline_proto(model)
            if any(e.key == STORE_SPARSE_KEY for e in proto.metadata_props):
                to_sparse(proto)  # weights a pass asked to store as sparse initializers
            _write(proto, output)
    except OSError as exc:
        raise InputError(f"cannot write {output}: {exc.strerror or exc}") from exc
    return output


def _write(proto: onnx.ModelProto, output: Path) -> None:
    with _atomic_target(output) as tmp_path:
        with open(tmp_path, "wb") as handle:
            handle.write(proto.SerializeToString())
            handle.flush()
            os.fsync(handle.fileno())


def _write_with_external_data(model: ir.Model, output: Path) -> None:
    """Model and ``<name>.data`` written into a temporary folder beside ``output``, then renamed
    into place (data first); on any failure nothing new is left."""
    data_name = output.name + ".data"
    folder = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    placed: Path | None = None
    try:
        tmp_model, tmp_data = folder / output.name, folder / data_name
        ir.save(model, tmp_model, external_data=data_name, size_threshold_bytes=large.DETACH_MIN_BYTES,
                alignment=65536)
        mode = new_file_mode()
        for path in (tmp_data, tmp_model):
            if path.exists():
                with open(path, "rb+") as handle:
                    os.fsync(handle.fileno())
                os.chmod(path, mode)
        if tmp_data.exists():
            placed = output.parent / data_name
            os.replace(tmp_data, placed)
        os.replace(tmp_model, output)
    except BaseException:
        if placed is not None:
            with contextlib.suppress(FileNotFoundError):
                placed.unlink()
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _atomic_target(output: Path) -> Iterator[Path]:
    """Yield a temp path beside ``output``; give it the umask's mode and rename it over ``output``
    on success, delete it otherwise."""
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp_path = Path(name)
    try:
        yield tmp_path
        os.chmod(tmp_path, new_file_mode())  # mkstemp makes 0600; the result gets a new file's usual mode
        os.replace(tmp_path, output)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def new_file_mode(directory: bool = False) -> int:
    """The mode a new file (or folder) gets under this process's umask: ``0o666 & ~umask`` (``0o777`` for folders)."""
    umask = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
    if umask is None:  # not Linux: read it by setting it (and putting it back at once)
        umask = os.umask(0o022)
        os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


atomic_target = _atomic_target
"""Public name for writers that need the temporary path itself (e.g. a plotting library's ``savefig``)."""


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it: never a partial file."""
    path = Path(path)
    with _atomic_target(path) as tmp:
        tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def opset_version(model: ir.Model | onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    from graphopt.opset_upgrade import opset_version as version

    return version(model)


def upgrade_opset(model: ir.Model, target: int = DEFAULT_OPSET) -> ir.Model:
    """Convert a model to opset ``target``: onnx's version converter after the repairs of
    :mod:`graphopt.opset_upgrade`; raises :class:`InputError` naming the node that blocks it."""
    from graphopt.opset_upgrade import upgrade

    return upgrade(model, target).model


def normalize_model(model: ir.Model) -> list[str]:
    """Bring old or exported models into the form the passes expect; return what was changed.

    * initializers also listed as graph inputs (IR < 4 exporters) are removed from the inputs,
      so passes may treat them as constants;
    * weights held in ``Constant`` nodes are lifted to initializers so pruning and quantization
      see them.
    """
    from graphopt.opset_upgrade import settle_ir_version

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
    raised = settle_ir_version(model)  # IR 3: initializers must be inputs; from IR 4 they need not be
    if raised:
        notes.append(raised)
    return notes


def custom_domains(model: ir.Model) -> set[str]:
    """Op domains that onnxruntime does not know natively (custom ops)."""
    known = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training", "ai.onnx.training"}
    used = {node.domain for node in ir.traversal.RecursiveGraphIterator(model.graph)}
    function_domains = {key[0] for key in model.functions}
    return {d for d in used if d not in known and d not in function_domains}

