"""Stand-ins for the CUDA driver and TensorRT, so the GPU code paths run (and fail loudly when wrong) here.

* :class:`FakeCuda` replaces ``libcuda.so.1``: "device memory" is host memory at real 64-bit addresses;
  asynchronous copies and kernels are queued per stream and run only at ``cuStreamSynchronize`` — so
  reading an output before synchronizing reads nothing; a context must be current in the calling thread;
  copies and kernels check that their addresses are live allocations large enough for them.
* :func:`fake_tensorrt` builds a ``tensorrt`` module with the TensorRT 10 Python API graphopt uses. Its
  "engine" computes ``logits[b, j] = (j + 1) * sum(input[b])`` on the fake device, for one dynamic-batch
  input ``input`` and one output ``logits`` (the shape of ``tests.conftest.conv_bn_model``), and records
  every call in order in ``module.calls``.

Signatures follow ``cuda.h`` and the TensorRT Python bindings (pyCore.cpp), cited in :data:`CUDA_H`.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import threading
import types

import numpy as np

# cuda.h: CUresult is an int enum, CUdevice an int, CUdeviceptr an unsigned long long, CUcontext and
# CUstream opaque pointers.
CUDA_H = {
    "cuInit": [ctypes.c_uint],
    "cuGetErrorString": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
    "cuDeviceGet": [ctypes.POINTER(ctypes.c_int), ctypes.c_int],
    "cuDevicePrimaryCtxRetain": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int],
    "cuCtxSetCurrent": [ctypes.c_void_p],
    "cuMemAlloc_v2": [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t],
    "cuMemFree_v2": [ctypes.c_uint64],
    "cuMemcpyHtoDAsync_v2": [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p],
    "cuMemcpyDtoHAsync_v2": [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p],
    "cuStreamCreate": [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint],
    "cuStreamSynchronize": [ctypes.c_void_p],
    "cuStreamDestroy_v2": [ctypes.c_void_p],
    "cuMemGetInfo_v2": [ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)],
}
CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_INVALID_CONTEXT = 1, 201
TOTAL_MEMORY = 80 << 30


def _value(arg):
    """The Python value of a ctypes argument (an int, a ctypes scalar, or ``None``)."""
    return getattr(arg, "value", arg)


def _target(byref_arg):
    """The ctypes object a ``ctypes.byref`` argument points to."""
    return byref_arg._obj


class _Function:
    def __init__(self, name: str, impl) -> None:
        self.name, self.impl, self.argtypes, self.restype, self.calls = name, impl, None, None, 0

    def __call__(self, *args):
        self.calls += 1
        return self.impl(*args)


class FakeCuda:
    """``libcuda.so.1`` for :mod:`graphopt.engines.cuda_driver` (see the module docstring)."""

    def __init__(self) -> None:
        self.allocations: dict[int, ctypes.Array] = {}
        self.queues: dict[int, list] = {}
        self.destroyed_streams: list[int] = []
        self.errors: list[str] = []
        self._current = threading.local()
        self._next_stream = 0x7F00_0000_0000
        for name in CUDA_H:
            setattr(self, name, _Function(name, getattr(self, "_" + name)))

    # -- what tests look at
    def called(self) -> dict[str, _Function]:
        return {name: fn for name in CUDA_H if (fn := getattr(self, name)).calls}

    def live_bytes(self) -> int:
        return sum(ctypes.sizeof(buffer) for buffer in self.allocations.values())

    def check_range(self, address: int, nbytes: int, what: str) -> bool:
        for start, buffer in self.allocations.items():
            if start <= address and address + nbytes <= start + ctypes.sizeof(buffer):
                return True
        self.errors.append(f"{what}: {nbytes} bytes at {address:#x} are not inside a live allocation")
        return False

    def enqueue(self, stream: int, operation) -> None:
        self.queues[stream].append(operation)

    # -- the driver API
    def _cuInit(self, flags):
        return 0

    def _cuGetErrorString(self, status, message):
        _target(message).value = f"fake CUDA error {status}".encode()
        return 0

    def _cuDeviceGet(self, device, index):
        _target(device).value = _value(index)
        return 0

    def _cuDevicePrimaryCtxRetain(self, context, device):
        _target(context).value = 0xC0_0000_0000 + _value(device)
        return 0

    def _cuCtxSetCurrent(self, context):
        self._current.context = _value(context)
        return 0

    def _has_context(self) -> bool:
        return bool(getattr(self._current, "context", None))

    def _cuMemAlloc_v2(self, pointer, nbytes):
        if not self._has_context():
            return CUDA_ERROR_INVALID_CONTEXT
        buffer = (ctypes.c_char * _value(nbytes))()
        self.allocations[ctypes.addressof(buffer)] = buffer
        _target(pointer).value = ctypes.addressof(buffer)
        return 0

    def _cuMemFree_v2(self, pointer):
        if not self._has_context():
            return CUDA_ERROR_INVALID_CONTEXT
        if self.allocations.pop(_value(pointer), None) is None:
            self.errors.append(f"cuMemFree of {_value(pointer):#x}, which is not allocated")
            return CUDA_ERROR_INVALID_VALUE
        return 0

    def _cuMemcpyHtoDAsync_v2(self, device, host, nbytes, stream):
        device, host, nbytes, stream = _value(device), _value(host), _value(nbytes), _value(stream) or 0
        if not self._has_context() or not self.check_range(device, nbytes, "cuMemcpyHtoDAsync"):
            return CUDA_ERROR_INVALID_CONTEXT if not self._has_context() else CUDA_ERROR_INVALID_VALUE
        staged = ctypes.string_at(host, nbytes)  # pageable source: staged before the call returns
        self.enqueue(stream, lambda: ctypes.memmove(device, staged, nbytes))
        return 0

    def _cuMemcpyDtoHAsync_v2(self, host, device, nbytes, stream):
        host, device, nbytes, stream = _value(host), _value(device), _value(nbytes), _value(stream) or 0
        if not self._has_context() or not self.check_range(device, nbytes, "cuMemcpyDtoHAsync"):
            return CUDA_ERROR_INVALID_CONTEXT if not self._has_context() else CUDA_ERROR_INVALID_VALUE
        self.enqueue(stream, lambda: ctypes.memmove(host, device, nbytes))
        return 0

    def _cuStreamCreate(self, stream, flags):
        if not self._has_context():
            return CUDA_ERROR_INVALID_CONTEXT
        self._next_stream += 0x100
        self.queues[self._next_stream] = []
        _target(stream).value = self._next_stream
        return 0

    def _cuStreamSynchronize(self, stream):
        if not self._has_context():
            return CUDA_ERROR_INVALID_CONTEXT
        queue = self.queues[_value(stream) or 0]
        while queue:
            queue.pop(0)()
        return 0

    def _cuStreamDestroy_v2(self, stream):
        self.queues.pop(_value(stream))
        self.destroyed_streams.append(_value(stream))
        return 0

    def _cuMemGetInfo_v2(self, free, total):
        if not self._has_context():
            return CUDA_ERROR_INVALID_CONTEXT
        _target(total).value = TOTAL_MEMORY
        _target(free).value = TOTAL_MEMORY - self.live_bytes()
        return 0


# ------------------------------------------------------------------------------------------ TensorRT
class DataType(enum.Enum):
    """TensorRT 10's ``DataType`` members (pyFoundationalTypes.cpp)."""

    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9
    FP4 = 10
    E8M0 = 11


PLAN_MAGIC = b"FAKEPLAN"


def fake_tensorrt(cuda: FakeCuda, version: str = "10.9.0.34", output_type: DataType = DataType.FLOAT,
                  strongly_typed_flag: bool = True, shape_tensor_input: bool = False) -> types.ModuleType:
    """A ``tensorrt`` module (see the module docstring); ``module.calls`` lists the calls in order."""
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = version
    trt.calls = calls = []
    trt.DataType = DataType
    trt.float32, trt.float16, trt.bfloat16 = DataType.FLOAT, DataType.HALF, DataType.BF16

    def nptype(dtype):  # TensorRT 10's own: bf16 / fp8 and the sub-byte types raise
        mapping = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8,
                   DataType.INT32: np.int32, DataType.INT64: np.int64, DataType.BOOL: np.bool_,
                   DataType.UINT8: np.uint8}
        if dtype in mapping:
            return mapping[dtype]
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    trt.nptype = nptype
    trt.TensorIOMode = enum.Enum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1} if strongly_typed_flag else {"PREFER_AOT_PYTHON_PLUGINS": 2}
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 2, "SPARSE_WEIGHTS": 9})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0})

    class ILogger:
        Severity = enum.IntEnum("Severity", {"INTERNAL_ERROR": 0, "ERROR": 1, "WARNING": 2, "INFO": 3, "VERBOSE": 4})

        def __init__(self) -> None:
            calls.append("ILogger")

    trt.ILogger = ILogger

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

    class Network:
        def __init__(self, flags):
            self.flags, self.inputs = flags, []

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, index):
            return self.inputs[index]

    class OnnxParser:
        num_errors = 0

        def __init__(self, network, logger):
            calls.append("OnnxParser")
            self.network, self.logger = network, logger

        def parse_from_file(self, path):
            import onnx

            calls.append("parse_from_file")
            model = onnx.load(path, load_external_data=False)
            for value in model.graph.input:
                dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
                self.network.inputs.append(Tensor(value.name, dims, DataType.FLOAT))
            return True

    trt.OnnxParser = OnnxParser

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return memoryview(self.data or b"fresh timing cache")

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            calls.append(("set_shape", name, tuple(low), tuple(opt), tuple(high)))
            self.shapes[name] = [list(low), list(opt), list(high)]

    class Config:
        def __init__(self):
            self.flags, self.profiles, self.cache, self._level = set(), [], None, 3

        def set_memory_pool_limit(self, pool, size):
            calls.append(("set_memory_pool_limit", pool.name, size))

        @property
        def builder_optimization_level(self):
            return self._level

        @builder_optimization_level.setter
        def builder_optimization_level(self, level):
            calls.append(("builder_optimization_level", level))
            self._level = level

        def set_flag(self, flag):
            calls.append(("set_flag", flag.name))
            self.flags.add(flag.name)

        def create_timing_cache(self, data):
            calls.append(("create_timing_cache", bytes(data)))
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
            accepted = cache.data != b"cache from another GPU"
            calls.append(("set_timing_cache", cache.data, ignore_mismatch, accepted))
            if accepted:
                self.cache = cache
            return accepted

        def get_timing_cache(self):
            return self.cache

        def add_optimization_profile(self, profile):
            calls.append("add_optimization_profile")
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            calls.append("Builder")

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network(flags)

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            calls.append("build_serialized_network")
            profile = config.profiles[0].shapes if config.profiles else {}
            inputs = {t.name: list(t.shape) for t in network.inputs}
            return memoryview(PLAN_MAGIC + json.dumps({"inputs": inputs, "profile": profile}).encode())

    trt.Builder = Builder

    class Runtime:
        def __init__(self, logger):
            calls.append("Runtime")
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            calls.append("deserialize_cuda_engine")
            data = bytes(data)
            if not data.startswith(PLAN_MAGIC):
                self.logger.log(ILogger.Severity.ERROR, "1: [runtime.cpp::deserialize] Magic tag does not match")
                return None
            return Engine(json.loads(data[len(PLAN_MAGIC):]))

    trt.Runtime = Runtime

    class Engine:
        device_memory_size_v2 = 4096

        def __init__(self, plan):
            self.inputs, self.profile = plan["inputs"], plan["profile"]
            self.outputs = {"logits": [next(iter(self.inputs.values()))[0], 10]}

        @property
        def num_io_tensors(self):
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, index):
            return [*self.inputs, *self.outputs][index]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return tuple(self.inputs.get(name) or self.outputs[name])

        def get_tensor_dtype(self, name):
            return DataType.FLOAT if name in self.inputs else output_type

        def get_tensor_profile_shape(self, name, index):
            assert index == 0 and name in self.inputs
            return [tuple(s) for s in self.profile[name]]

        def is_shape_inference_io(self, name):
            return shape_tensor_input and name in self.inputs

        def create_execution_context(self):
            calls.append("create_execution_context")
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            calls.append(("set_input_shape", name, tuple(shape)))
            declared = self.engine.inputs[name]
            low, _, high = self.engine.profile.get(name, [declared, declared, declared])
            fits = len(shape) == len(declared) and all(
                (d == s if d >= 0 else lo <= s <= hi) for d, s, lo, hi in zip(declared, shape, low, high))
            if fits:
                self.shapes[name] = tuple(shape)
            return fits

        def get_tensor_shape(self, name):
            calls.append(("get_tensor_shape", name))
            if name in self.engine.inputs:
                return self.shapes.get(name, tuple(self.engine.inputs[name]))
            batch = next(iter(self.shapes.values()), (-1,))[0] if self.shapes else -1
            return (batch, 10)

        def set_tensor_address(self, name, address):
            calls.append(("set_tensor_address", name))
            self.addresses[name] = address
            return True

        def execute_async_v3(self, stream_handle):
            calls.append("execute_async_v3")
            (name, shape), = self.shapes.items()
            out_dtype = np.dtype(np.float32) if output_type is DataType.FLOAT else _ml_dtype(output_type)
            n_in, n_out = int(np.prod(shape)) * 4, shape[0] * 10 * out_dtype.itemsize
            source, target = self.addresses[name], self.addresses["logits"]
            if not (cuda.check_range(source, n_in, "kernel input") and cuda.check_range(target, n_out, "kernel output")):
                return False

            def kernel():
                x = np.frombuffer(ctypes.string_at(source, n_in), np.float32).reshape(shape)
                logits = x.reshape(shape[0], -1).sum(axis=1, keepdims=True) * np.arange(1, 11, dtype=np.float32)
                ctypes.memmove(target, np.ascontiguousarray(logits.astype(out_dtype)).tobytes(), n_out)

            cuda.enqueue(stream_handle, kernel)
            return True

    return trt


def _ml_dtype(dtype: DataType) -> np.dtype:
    import ml_dtypes

    return np.dtype({DataType.BF16: ml_dtypes.bfloat16, DataType.HALF: np.float16}[dtype])


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What the fake engine computes."""
    return x.reshape(len(x), -1).sum(axis=1, keepdims=True).astype(np.float32) * np.arange(1, 11, dtype=np.float32)
