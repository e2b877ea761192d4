"""Models over protobuf's 2 GB limit: the weights stay out of the proto, read from where they lie.

protobuf cannot serialize a message over 2 GB, and every library graphopt hands a model to (onnx's
checker and shape inference, onnxruntime, the quantizer) takes a serialized proto; copying 2 GB of
weights into a proto for each of them would also cost gigabytes of memory. For a large model
graphopt therefore works on a **skeleton**: the ``ModelProto`` with every main-graph initializer of at least :data:`DETACH_MIN_BYTES` replaced by a
placeholder (an external-data reference to ``graphopt-detached-<key>``), while the tensors stay in
a :class:`WeightStore` as they were (in the model's external-data file, or the arrays a pass made).

* onnxruntime maps weights that lie in a file itself: the session's skeleton points at that file
  (``session.model_external_initializers_file_folder_path``), so no copy is made; other weights
  (arrays a pass made) are handed over as ``OrtValue``s, which onnxruntime copies
  (:func:`session_input`);
* graphopt itself reads file-backed weights in chunks through the page cache (:func:`chunks`), never
  through a mapping of its own: a page mapped twice counts twice in the resident set;
* onnx's checker only checks that an external file exists: it checks a skeleton against empty
  files in a scratch folder (:func:`check_model`); shape inference needs no weight values (small
  tensors such as shapes stay inline);
* a library that changes a placeholder's element type in the skeleton (the fp16 converter rewrites
  FLOAT weights to FLOAT16 without touching their bytes) gets the values from the store, converted
  once with the library's own rule, chunk by chunk, into a spill file the store owns
  (:meth:`WeightStore.tensor`): converted weights live on disk (page cache), not in the heap;
* code that scans weight values of a proto uses :func:`max_abs` / :func:`chunks`; a library that must
  see the bytes (the quantizer) gets them for the tensors it reads only (:func:`inject`).

The PassManager opens one :func:`weights_scope` for a pipeline whose input keeps its weights
detached (:func:`keeps_weights_detached`: from :data:`DETACH_FROM_BYTES`, or external data);
:func:`to_proto` / :func:`from_proto` then detach / attach, and outside a scope they are onnx_ir's.
Lowering the thresholds (tests do) sends small models down the same path.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import itertools
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir

LARGE_MODEL_BYTES = 2 * 1024**3
"""Initializer bytes from which a model cannot be one proto (protobuf's limit): libraries that need
the whole model in one proto (onnxsim) are skipped, and the model is saved with external data."""

DETACH_FROM_BYTES = 512 * 1024**2
"""Initializer bytes from which the pipeline keeps weights out of protos (also any model whose
weights lie in external-data files): each proto copy of the weights costs their size in memory."""

DETACH_MIN_BYTES = 1024
"""Initializers smaller than this stay inline in a skeleton (shape tensors, scales, biases)."""

PLACEHOLDER_PREFIX = "graphopt-detached-"

CHUNK_BYTES = 16 * 1024**2
"""Bytes of a weight read, hashed or converted at a time (bounds every temporary)."""

SPILL_ALIGNMENT = 65536
"""Offsets of spilled weights in their file (lets onnxruntime map them)."""


def weight_bytes(model: ir.Model | onnx.ModelProto) -> int:
    """Bytes of every initializer (all graphs), from shapes and types: no weight is read."""
    if isinstance(model, onnx.ModelProto):
        return sum(_proto_tensor_bytes(t) for graph in _proto_graphs(model.graph) for t in graph.initializer)
    return sum(v.const_value.nbytes for graph in model.graphs() for v in graph.initializers.values()
               if v.const_value is not None)


def _proto_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                yield from _proto_graphs(sub)


def _proto_tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    try:
        return int(count * ir.DataType(tensor.data_type).itemsize)
    except ValueError:
        return len(tensor.raw_data)


def is_large(model: ir.Model | onnx.ModelProto) -> bool:
    """True when the model's weights reach :data:`LARGE_MODEL_BYTES` (read at call time, so tests can lower it)."""
    return weight_bytes(model) >= LARGE_MODEL_BYTES


def has_external_weights(model: ir.Model) -> bool:
    """True when some of ``model``'s weights lie in files (its external data, a spill file)."""
    return any(isinstance(v.const_value, ir.ExternalTensor) and not _placeholder(v.const_value)
               for graph in model.graphs() for v in graph.initializers.values())


def keeps_weights_detached(model: ir.Model) -> bool:
    """True when the pipeline should keep ``model``'s weights out of protos: they reach
    :data:`DETACH_FROM_BYTES`, or some lie in files (a plain proto would only point at them)."""
    return weight_bytes(model) >= min(DETACH_FROM_BYTES, LARGE_MODEL_BYTES) or has_external_weights(model)


class WeightStore:
    """The tensors a skeleton's placeholders stand for, by placeholder location.

    A tensor object gets one key for as long as the store lives (detaching it again reuses it).
    A placeholder whose element type differs from its tensor's (a library retyped it) is served
    converted; each conversion is made once, written to the store's spill file (removed with the
    store) and served from there as an external tensor.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, ir.TensorProtocol] = {}
        self._keys: dict[int, str] = {}
        self._converted: dict[tuple[str, ir.DataType], ir.TensorProtocol] = {}
        self._counter = itertools.count()
        self._spill: tuple[str, str] | None = None  # (folder, file name)

    def __len__(self) -> int:
        return len(self._tensors)

    def add(self, tensor: ir.TensorProtocol) -> str:
        """The placeholder location of ``tensor`` (registered on first sight)."""
        location = self._keys.get(id(tensor))
        if location is None:
            location = f"{PLACEHOLDER_PREFIX}{next(self._counter)}"
            self._keys[id(tensor)] = location
            self._tensors[location] = tensor  # keeps the object alive, so its id stays unique
        return location

    def source(self, location: str) -> ir.TensorProtocol:
        """The tensor registered under ``location``, as it was given."""
        return self._tensors[location]

    def tensor(self, location: str, dtype: ir.DataType, name: str) -> ir.TensorProtocol:
        """The tensor behind ``location`` in element type ``dtype``."""
        try:
            source = self._tensors[location]
        except KeyError:
            raise KeyError(f"no detached weight '{location}' (for '{name}') in the weight store") from None
        if source.dtype == dtype:
            return source
        key = (location, dtype)
        if key not in self._converted:
            converted = self._spill_converted(source, dtype, name)
            self._converted[key] = converted
            self.add(converted)  # detaching the converted tensor again finds it by identity
        return self._converted[key]

    def _spill_converted(self, source: ir.TensorProtocol, dtype: ir.DataType, name: str) -> ir.ExternalTensor:
        if self._spill is None:
            folder = tempfile.mkdtemp(prefix="graphopt-weights-")
            weakref.finalize(self, shutil.rmtree, folder, True)
            self._spill = (folder, "spill.data")
        folder, file_name = self._spill
        path = os.path.join(folder, file_name)
        with open(path, "ab") as handle:
            end = handle.seek(0, os.SEEK_END)
            offset = -(-end // SPILL_ALIGNMENT) * SPILL_ALIGNMENT
            handle.write(b"\0" * (offset - end))
            for chunk in chunks(source):
                handle.write(convert_weight(chunk, source.dtype, dtype).tobytes())
            length = handle.tell() - offset
        return ir.ExternalTensor(file_name, offset, length, dtype, shape=ir.Shape(tuple(source.shape)),
                                 name=name, base_dir=folder)

    def keep_alive_with(self, model: ir.Model) -> ir.Model:
        """Tie the store (and its spill file) to ``model``, whose tensors may lie there."""
        if self._spill is not None:
            model.meta["graphopt.weight_store"] = self
        return model


def chunks(tensor: ir.TensorProtocol) -> Iterator[np.ndarray]:
    """A tensor's values, flat, :data:`CHUNK_BYTES` at a time. A weight in a file is read through
    the page cache into one reused buffer (each chunk is valid until the next one); nothing is mapped."""
    itemsize = max(1, tensor.dtype.bitwidth // 8)
    step = max(1, CHUNK_BYTES // itemsize)
    if not isinstance(tensor, ir.ExternalTensor) or _placeholder(tensor) or tensor.dtype.bitwidth < 8:
        flat = tensor.numpy().reshape(-1)
        for start in range(0, flat.size, step):
            yield flat[start:start + step]
        return
    dtype = np.dtype(tensor.dtype.numpy()).newbyteorder("<")
    remaining = tensor.nbytes
    buffer = bytearray(min(remaining, step * itemsize))
    with open(tensor.path, "rb") as handle:
        handle.seek(tensor.offset or 0)
        while remaining:
            view = memoryview(buffer)[:min(remaining, len(buffer))]
            got = handle.readinto(view)
            if not got:
                raise OSError(f"external data of '{tensor.name}' ends early: {tensor.path}")
            usable = got - got % itemsize
            if usable != got:
                handle.seek(usable - got, os.SEEK_CUR)
            yield np.frombuffer(view[:usable], dtype=dtype)
            remaining -= usable


def convert_weight(array: np.ndarray, source: ir.DataType, target: ir.DataType) -> np.ndarray:
    """``array`` in ``target`` by the rule of the library that retyped it.

    FLOAT → FLOAT16: onnxruntime's fp16 converter's rule (``convert_np_to_float16``: magnitudes
    clamped into [5.96e-8, 65504], zeros, signs and non-finite values kept); FLOAT → BFLOAT16:
    round to nearest even (``ml_dtypes``), as graphopt's bf16 retyping does.
    """
    if (source, target) == (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        from onnxruntime.transformers.float16 import convert_np_to_float16

        return convert_np_to_float16(np.asarray(array))
    if (source, target) == (ir.DataType.FLOAT, ir.DataType.BFLOAT16):
        return np.asarray(array).astype(target.numpy())
    raise ValueError(f"cannot derive a {target.name} weight from a {source.name} one")


def max_abs(tensor: onnx.TensorProto) -> float:
    """Largest ``|x|`` of an initializer of a proto, a placeholder read chunk by chunk."""
    location = _location(tensor)
    if location is None:
        array = onnx.numpy_helper.to_array(tensor)
        return max(abs(float(np.max(array))), abs(float(np.min(array)))) if array.size else 0.0
    store = _store_for(tensor.name)
    source = store.tensor(location, ir.DataType(tensor.data_type), tensor.name)
    found = 0.0
    for chunk in chunks(source):
        if chunk.size:
            found = max(found, abs(float(np.max(chunk))), abs(float(np.min(chunk))))
    return found


_ACTIVE: contextvars.ContextVar[WeightStore | None] = contextvars.ContextVar("graphopt_weight_store", default=None)


@contextlib.contextmanager
def weights_scope(store: WeightStore | None = None) -> Iterator[WeightStore]:
    """Within the body, :func:`to_proto` detaches and placeholders resolve through ``store``."""
    store = store if store is not None else WeightStore()
    token = _ACTIVE.set(store)
    try:
        yield store
    finally:
        _ACTIVE.reset(token)


def active_store() -> WeightStore | None:
    return _ACTIVE.get()


@contextlib.contextmanager
def scope_for(model: ir.Model) -> Iterator[WeightStore | None]:
    """The active scope; else a new one when ``model`` keeps its weights detached; else none."""
    if active_store() is not None or not keeps_weights_detached(model):
        yield active_store()
        return
    with weights_scope() as store:
        yield store


def _placeholder(tensor: ir.TensorProtocol | None) -> bool:
    return isinstance(tensor, ir.ExternalTensor) and str(tensor.location).startswith(PLACEHOLDER_PREFIX)


def detach(model: ir.Model, store: WeightStore, min_bytes: int | None = None) -> onnx.ModelProto:
    """The skeleton of ``model``: main-graph initializers of ``min_bytes`` (default
    :data:`DETACH_MIN_BYTES`) or more as placeholders. ``model`` is left as it was; no weight is
    read or copied.
    """
    min_bytes = DETACH_MIN_BYTES if min_bytes is None else min_bytes
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in model.graph.initializers.values():
            tensor = value.const_value
            if (tensor is None or _placeholder(tensor) or tensor.nbytes < min_bytes
                    or tensor.dtype == ir.DataType.STRING):
                continue
            value.const_value = ir.ExternalTensor(store.add(tensor), 0, tensor.nbytes, tensor.dtype,
                                                  shape=ir.Shape(tuple(tensor.shape)), name=value.name)
            swapped.append((value, tensor))
        return ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def inline_proto(model: ir.Model) -> onnx.ModelProto:
    """``ir.to_proto`` with the bytes of every external-data weight inside (a self-contained proto
    for a model under protobuf's limit; each such weight is read once)."""
    swapped: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for graph in model.graphs():
            for value in graph.initializers.values():
                original = tensor = value.const_value
                if isinstance(tensor, ir.ExternalTensor):
                    if _placeholder(tensor):
                        tensor = _store_for(value.name).tensor(str(tensor.location), tensor.dtype, value.name)
                    value.const_value = ir.Tensor(tensor.numpy(), dtype=tensor.dtype, name=value.name)
                    swapped.append((value, original))
        return ir.to_proto(model)
    finally:
        for value, tensor in swapped:
            value.const_value = tensor


def attach(proto: onnx.ModelProto, store: WeightStore) -> ir.Model:
    """``proto`` as an ``ir.Model`` whose placeholders are the store's tensors again."""
    model = ir.from_proto(proto)
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if _placeholder(tensor):
            value.const_value = store.tensor(str(tensor.location), tensor.dtype, value.name)
    return model


def resolve(model: ir.Model) -> ir.Model:
    """Replace, in place, any placeholder left in ``model``'s initializers by the store's tensor."""
    for graph in model.graphs():
        for value in graph.initializers.values():
            tensor = value.const_value
            if _placeholder(tensor):
                value.const_value = _store_for(value.name).tensor(str(tensor.location), tensor.dtype, value.name)
    store = active_store()
    return store.keep_alive_with(model) if store is not None else model


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """``ir.to_proto``, or the skeleton inside a :func:`weights_scope`."""
    store = active_store()
    return detach(model, store) if store is not None else ir.to_proto(model)


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """``ir.from_proto``, with placeholders resolved inside a :func:`weights_scope`."""
    store = active_store()
    return attach(proto, store) if store is not None and placeholders(proto) else ir.from_proto(proto)


def _location(tensor: onnx.TensorProto) -> str | None:
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return None
    location = next((e.value for e in tensor.external_data if e.key == "location"), "")
    return location if location.startswith(PLACEHOLDER_PREFIX) else None


def placeholders(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    """``{initializer name: tensor}`` of the main graph's placeholders."""
    return {t.name: t for t in proto.graph.initializer if _location(t) is not None}


def _store_for(what: str) -> WeightStore:
    store = active_store()
    if store is None:
        raise RuntimeError(f"{what}: weights are detached, but no weight store is active")
    return store


def inject(proto: onnx.ModelProto, names: set[str]) -> int:
    """Write the bytes of the placeholders named ``names`` into ``proto`` (for a library that reads
    them); returns how many. Only what that library reads is copied, one tensor at a time."""
    done = 0
    for tensor in proto.graph.initializer:
        if tensor.name in names and _location(tensor) is not None:
            source = _store_for(tensor.name).tensor(_location(tensor), ir.DataType(tensor.data_type), tensor.name)
            data = b"".join(chunk.tobytes() for chunk in chunks(source))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = data
            done += 1
    return done


def ort_value(array: np.ndarray, dtype: ir.DataType):
    """An ``OrtValue`` over ``array``'s memory (no copy); 16-bit floats numpy lacks go by bit pattern."""
    import onnxruntime as ort

    array = np.ascontiguousarray(array)
    if array.dtype.kind in "biuf" and array.dtype.type.__module__ == "numpy":
        return ort.OrtValue.ortvalue_from_numpy(array)
    bits = array.view(np.dtype(f"uint{array.dtype.itemsize * 8}"))
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(bits, int(dtype))


@dataclasses.dataclass
class SessionInput:
    """What an onnxruntime session is built from (see :func:`session_input`)."""

    model: bytes
    folder: str | None = None
    """Folder the skeleton's file references are relative to (``None``: it has none)."""
    names: list[str] = dataclasses.field(default_factory=list)
    values: list = dataclasses.field(default_factory=list)
    """``OrtValue``s of the weights that lie in no file of ``folder`` (onnxruntime copies them)."""


def session_input(model: ir.Model | onnx.ModelProto | bytes) -> SessionInput:
    """The serialized model an onnxruntime session is built from, and where its weights come from.

    A model that fits a proto is serialized whole. Otherwise the skeleton: its placeholders for
    weights that lie in a file (of the folder that holds most of them) point at that file, so
    onnxruntime maps it; the rest become ``OrtValue``s.
    """
    if isinstance(model, bytes):
        return SessionInput(model)
    if isinstance(model, ir.Model):
        store = active_store()
        if store is None and not keeps_weights_detached(model):
            return SessionInput(ir.to_proto(model).SerializeToString())
        store = store if store is not None else WeightStore()
        proto = detach(model, store)
    else:
        proto = model
        detached = placeholders(proto)
        store = _store_for(proto.graph.name or "model") if detached else active_store()
        inline = weight_bytes(proto) - sum(_proto_tensor_bytes(t) for t in detached.values())
        if inline >= min(DETACH_FROM_BYTES, LARGE_MODEL_BYTES):  # weights a pass wrote into the proto
            store = store if store is not None else WeightStore()
            proto = detach(ir.from_proto(proto), store)
        elif not detached:
            return SessionInput(proto.SerializeToString())
    sources = {name: store.tensor(_location(t), ir.DataType(t.data_type), name)
               for name, t in placeholders(proto).items()}
    on_disk = {name: t for name, t in sources.items()
               if isinstance(t, ir.ExternalTensor) and not _placeholder(t) and t.dtype.bitwidth >= 8}
    by_folder: dict[str, int] = {}
    for tensor in on_disk.values():
        folder = os.path.dirname(os.path.abspath(tensor.path))
        by_folder[folder] = by_folder.get(folder, 0) + tensor.nbytes
    folder = max(by_folder, key=by_folder.get) if by_folder else None
    result = SessionInput(b"", folder)
    saved: list[tuple[onnx.TensorProto, list[tuple[str, str]]]] = []
    try:
        for name, tensor in placeholders(proto).items():
            source = sources[name]
            if name in on_disk and os.path.dirname(os.path.abspath(source.path)) == folder:
                saved.append((tensor, [(e.key, e.value) for e in tensor.external_data]))
                del tensor.external_data[:]
                entries = {"location": os.path.relpath(os.path.abspath(source.path), folder),
                           "offset": str(source.offset or 0), "length": str(source.nbytes)}
                for key, value in entries.items():
                    tensor.external_data.add(key=key, value=value)
            else:
                result.names.append(name)
                result.values.append(ort_value(source.numpy(), source.dtype))
        result.model = proto.SerializeToString()
    finally:  # a pass's own proto is left as it was
        for tensor, entries in saved:
            del tensor.external_data[:]
            for key, value in entries:
                tensor.external_data.add(key=key, value=value)
    return result


def check_model(proto: onnx.ModelProto, full_check: bool = False) -> None:
    """``onnx.checker.check_model`` for a proto or a skeleton (placeholders checked as files that exist)."""
    locations = [_location(t) for t in placeholders(proto).values()]
    if not locations:
        onnx.checker.check_model(proto, full_check=full_check)
        return
    from graphopt.scratch import scratch_cwd

    with scratch_cwd() as folder:
        for location in set(locations):
            (folder / location).touch()
        onnx.checker.check_model(proto, full_check=full_check)
