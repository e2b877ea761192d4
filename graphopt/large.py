"""Models over protobuf's 2 GB limit: the weights stay out of the proto, read from where they lie.

protobuf cannot serialize a message over 2 GB, and every library graphopt hands a model to (onnx's
checker and shape inference, onnxruntime, the quantizer) takes a serialized proto; copying 2 GB of
weights into a proto for each of them would also cost gigabytes of memory. For a large model
graphopt therefore works on a **skeleton**: the
``ModelProto`` with every main-graph initializer of at least :data:`DETACH_MIN_BYTES` replaced by a
placeholder (an external-data reference to ``graphopt-detached-<key>``), while the tensors stay in
a :class:`WeightStore` as they were (memory-mapped external data, or the arrays a pass made).

* onnxruntime receives the tensors through ``SessionOptions.add_external_initializers``: numpy
  views of the mapped file, no copy (:func:`session_input`);
* onnx's checker only checks that an external file exists: it checks a skeleton against empty
  files in a scratch folder (:func:`check_model`); shape inference needs no weight values (small
  tensors such as shapes stay inline);
* a library that changes a placeholder's element type in the skeleton (the fp16 converter rewrites
  FLOAT weights to FLOAT16 without touching their bytes) gets the values from the store, converted
  once with the library's own rule (:meth:`WeightStore.tensor`);
* code that reads weight values from a proto uses :func:`initializer_array`; a library that must
  see the bytes (the quantizer) gets them for the tensors it reads only (:func:`inject`).

The PassManager opens one :func:`weights_scope` for a pipeline whose input keeps its weights
detached (:func:`keeps_weights_detached`: from :data:`DETACH_FROM_BYTES`, or external data);
:func:`to_proto` / :func:`from_proto` then detach / attach, and outside a scope they are onnx_ir's.
Lowering the thresholds (tests do) sends small models down the same path.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
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

CONVERT_CHUNK = 1 << 24
"""Elements converted at a time when a weight changes type (bounds the temporaries)."""


def weight_bytes(model: ir.Model | onnx.ModelProto) -> int:
    """Bytes of every initializer (all graphs), from shapes and types: no weight is read."""
    if isinstance(model, onnx.ModelProto):
        return sum(_proto_tensor_bytes(t) for t in onnx.external_data_helper._get_initializer_tensors(model))
    return sum(v.const_value.nbytes for graph in model.graphs() for v in graph.initializers.values()
               if v.const_value is not None)


def _proto_tensor_bytes(tensor: onnx.TensorProto) -> int:
    count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
    try:
        return count * ir.DataType(tensor.data_type).itemsize
    except ValueError:
        return len(tensor.raw_data)


def is_large(model: ir.Model | onnx.ModelProto) -> bool:
    """True when the model's weights reach :data:`LARGE_MODEL_BYTES` (read at call time, so tests can lower it)."""
    return weight_bytes(model) >= LARGE_MODEL_BYTES


def keeps_weights_detached(model: ir.Model) -> bool:
    """True when the pipeline should keep ``model``'s weights out of protos: they reach
    :data:`DETACH_FROM_BYTES`, or some lie in external-data files (a plain proto would only point at them)."""
    if weight_bytes(model) >= min(DETACH_FROM_BYTES, LARGE_MODEL_BYTES):
        return True
    return any(isinstance(v.const_value, ir.ExternalTensor) and not _placeholder(v.const_value)
               for graph in model.graphs() for v in graph.initializers.values())


class WeightStore:
    """The tensors a skeleton's placeholders stand for, by placeholder location.

    A tensor object gets one key for as long as the store lives (detaching it again reuses it).
    A placeholder whose element type differs from its tensor's (a library retyped it) is served
    converted; each conversion is made once and kept.
    """

    def __init__(self) -> None:
        self._tensors: dict[str, ir.TensorProtocol] = {}
        self._keys: dict[int, str] = {}
        self._converted: dict[tuple[str, ir.DataType], ir.Tensor] = {}
        self._counter = itertools.count()

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
            converted = ir.Tensor(convert_weight(source.numpy(), source.dtype, dtype), name=name)
            self._converted[key] = converted
            self.add(converted)  # detaching the converted tensor again finds it by identity
        return self._converted[key]

    def array(self, location: str, dtype: ir.DataType, name: str) -> np.ndarray:
        return self.tensor(location, dtype, name).numpy()


def convert_weight(array: np.ndarray, source: ir.DataType, target: ir.DataType) -> np.ndarray:
    """``array`` in ``target`` by the rule the library that retyped it uses, chunk by chunk.

    FLOAT → FLOAT16: onnxruntime's fp16 converter's rule (``convert_np_to_float16``: magnitudes
    clamped into [5.96e-8, 65504], zeros, signs and non-finite values kept); FLOAT → BFLOAT16:
    round to nearest even (``ml_dtypes``), as graphopt's bf16 retyping does.
    """
    if (source, target) == (ir.DataType.FLOAT, ir.DataType.FLOAT16):
        from onnxruntime.transformers.float16 import convert_np_to_float16

        def rule(chunk):
            return convert_np_to_float16(chunk)
    elif (source, target) == (ir.DataType.FLOAT, ir.DataType.BFLOAT16):
        def rule(chunk):
            return chunk.astype(target.numpy())
    else:
        raise ValueError(f"cannot derive a {target.name} weight from a {source.name} one")
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=target.numpy())
    for start in range(0, flat.size, CONVERT_CHUNK):
        out[start:start + CONVERT_CHUNK] = rule(np.asarray(flat[start:start + CONVERT_CHUNK]))
    return out.reshape(array.shape)


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
    return model


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


def initializer_array(tensor: onnx.TensorProto) -> np.ndarray:
    """The values of an initializer of a proto, placeholder or not."""
    location = _location(tensor)
    if location is None:
        return onnx.numpy_helper.to_array(tensor)
    return _store_for(tensor.name).array(location, ir.DataType(tensor.data_type), tensor.name)


def inject(proto: onnx.ModelProto, names: set[str]) -> int:
    """Write the bytes of the placeholders named ``names`` into ``proto`` (for a library that reads
    them); returns how many. Only what that library reads is copied, one tensor at a time."""
    done = 0
    for tensor in proto.graph.initializer:
        if tensor.name in names and _location(tensor) is not None:
            array = np.ascontiguousarray(initializer_array(tensor))
            del tensor.external_data[:]
            tensor.data_location = onnx.TensorProto.DEFAULT
            tensor.raw_data = array.tobytes()
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


def session_input(model: ir.Model | onnx.ModelProto | bytes) -> tuple[bytes, list[str], list]:
    """What an onnxruntime session is built from: the serialized (skeleton) model plus the
    initializers to add as ``OrtValue``s (empty for a model that fits a proto)."""
    if isinstance(model, bytes):
        return model, [], []
    if isinstance(model, ir.Model):
        store = active_store()
        if store is None and not keeps_weights_detached(model):
            return ir.to_proto(model).SerializeToString(), [], []
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
            return proto.SerializeToString(), [], []
    names, values = [], []
    for name, tensor in placeholders(proto).items():
        dtype = ir.DataType(tensor.data_type)
        names.append(name)
        values.append(ort_value(store.array(_location(tensor), dtype, name), dtype))
    return proto.SerializeToString(), names, values


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
