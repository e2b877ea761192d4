"""TensorRT engines: build a plan from an ONNX model, load it, run it with device buffers.

TensorRT is imported lazily (extra ``graphopt[trt]``) and only after a usable NVIDIA GPU has answered
through the CUDA driver (:func:`require_gpu`): creating TensorRT objects without one can take the
process down instead of raising.

Build (:func:`build_plan`), with the TensorRT 10 Python API:

* a **strongly typed** network parsed from the ONNX file (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``
  on TensorRT 10; TensorRT 11 keeps the flag but ignores it, every network being strongly typed there):
  tensor types come from the graph — fp16 where graphopt's fp16 pass put fp16, int8 exactly where its
  int8 pass put Q/DQ pairs (explicit quantization). The implicit ``FP16``/``INT8`` builder flags are
  deprecated in TensorRT 10, removed in 11, and not allowed on such a network;
* one optimization profile covering every dynamic input (:mod:`graphopt.engines.shapes`);
* a timing cache, loaded from and saved back to a file, so a rebuild skips the kernel timings it has;
* ``builder_optimization_level`` (0–5, TensorRT's default 3) and a workspace limit;
* ``SPARSE_WEIGHTS`` when the model's metadata lists 2:4-sparse initializers (:func:`sparse_24_tensors`).

Load (:class:`TrtEngine`): ``engine.json`` is checked against this machine's TensorRT version and GPU
before the plan is deserialized (:func:`graphopt.engines.manifest.check_compatible`). I/O tensors are
numpy arrays of the engine's types (:func:`numpy_dtype`: bf16 and fp8 through ``ml_dtypes``, which
``trt.nptype`` does not map); every TensorRT call that reports failure by its return value is checked.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from graphopt.data import InputSpec
from graphopt.errors import GraphoptError, InputError
from graphopt.model_io import write_atomic
from graphopt.target import GpuInfo, cuda_gpus


class EngineUnavailableError(InputError):
    """TensorRT cannot run here: not installed, or no usable NVIDIA GPU (exit 2)."""


class EngineBuildError(GraphoptError):
    """TensorRT could not parse the model or build the plan (exit 1)."""

    exit_code = 1


class EngineRunError(GraphoptError):
    """TensorRT could not run a loaded engine (exit 1)."""

    exit_code = 1


def require_gpu() -> GpuInfo:
    """The first GPU the CUDA driver reports; raises before any TensorRT object exists when there is none."""
    gpus = cuda_gpus()
    if not gpus:
        raise EngineUnavailableError("TensorRT needs an NVIDIA GPU, and none answered through the CUDA driver "
                                     "(libcuda) on this machine")
    return gpus[0]


def tensorrt_version() -> str | None:
    """The installed TensorRT's version (``None`` when absent), as ``tensorrt.__version__`` says.

    That is the string a build records in engine.json and the version a plan must match. With a GPU the
    module is imported to read it (the meta-package's metadata can name another version than the
    bindings that really load); without one only package metadata is read — no TensorRT import."""
    if importlib.util.find_spec("tensorrt") is None:
        return None
    if cuda_gpus():
        return import_tensorrt().__version__
    from importlib import metadata

    for name in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown"


def import_tensorrt():
    """``import tensorrt`` after :func:`require_gpu`; a one-line error when it is not installed."""
    require_gpu()
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise EngineUnavailableError(f"TensorRT is not installed ({exc}); pip install 'graphopt[trt]'") from exc


_NUMPY_TYPES = {"FLOAT": "float32", "HALF": "float16", "INT8": "int8", "UINT8": "uint8", "INT32": "int32",
                "INT64": "int64", "BOOL": "bool", "BF16": "bfloat16", "FP8": "float8_e4m3fn"}
"""TensorRT ``DataType`` name → numpy type name. ``trt.nptype`` maps only the first seven ("fp8 and bfloat16
have no equivalent numpy type") and raises ``TypeError`` for the rest; bf16 and fp8 (E4M3, TensorRT's only
FP8) come from ``ml_dtypes`` (an onnx dependency). INT4 and FP4 are packed two to a byte and E8M0 is a
scale type: no numpy array can hold them as I/O, so :func:`numpy_dtype` refuses them with one line."""


def numpy_dtype(trt_dtype, tensor: str = "") -> np.dtype:
    """The numpy dtype of a TensorRT I/O tensor of type ``trt_dtype`` (see :data:`_NUMPY_TYPES`)."""
    name = getattr(trt_dtype, "name", None) or str(trt_dtype).rsplit(".", 1)[-1]
    numpy_name = _NUMPY_TYPES.get(name)
    if numpy_name is None:
        raise InputError(f"engine tensor {tensor or '(unnamed)'} has TensorRT type {name}, which graphopt cannot feed or read "
                         "as a numpy array; keep this tensor in a wider type at the model's inputs/outputs")
    if numpy_name in ("bfloat16", "float8_e4m3fn"):
        import ml_dtypes

        return np.dtype(getattr(ml_dtypes, numpy_name))
    return np.dtype(numpy_name)


def sparse_24_tensors(model: onnx.ModelProto) -> dict[str, list[str]]:
    """``{key: names}`` of the initializers the pruning pass recorded as 2:4 under
    :data:`graphopt.sparsity.SPARSITY_2_4_KEY` (names that are not main-graph initializers dropped);
    empty when there are none or the value is malformed."""
    from graphopt.sparsity import SPARSITY_2_4_KEY, parse_recorded_names

    initializers = {init.name for init in model.graph.initializer}
    text = next((entry.value for entry in model.metadata_props if entry.key == SPARSITY_2_4_KEY), None)
    names = [name for name in parse_recorded_names(text) if name in initializers]
    return {SPARSITY_2_4_KEY: names} if names else {}


@dataclasses.dataclass(frozen=True)
class TrtBuildSettings:
    workspace_bytes: int = 4 << 30
    builder_optimization_level: int = 3
    timing_cache: Path | None = None
    """A timing cache file to start from and to save the updated cache back to (shared between builds)."""

    def __post_init__(self) -> None:
        if not 0 <= self.builder_optimization_level <= 5:
            raise InputError(f"builder optimization level must be 0–5, got {self.builder_optimization_level}")
        if self.workspace_bytes <= 0:
            raise InputError(f"workspace must be > 0 bytes, got {self.workspace_bytes}")


def _logger_class(trt):
    class CapturingLogger(trt.ILogger):
        """Keeps TensorRT's messages (warnings and errors) instead of printing them."""

        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):  # noqa: D102 - TensorRT's callback
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                name = getattr(severity, "name", None) or str(severity).rsplit(".", 1)[-1]
                self.messages.append((name, msg))

        def last_error(self) -> str:
            errors = [m for s, m in self.messages if s in ("ERROR", "INTERNAL_ERROR")]
            return (errors[-1] if errors else "no error message").strip().splitlines()[0][:300]

    return CapturingLogger


def network_flags(trt) -> int:
    """``create_network`` flags: strongly typed. TensorRT 11 keeps ``STRONGLY_TYPED`` only for compatibility
    (every network is strongly typed there); should a later release drop the name, 0 means the same."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_plan(model_path: Path, out_dir: Path, profile: dict, settings: TrtBuildSettings,
               sparse_tensors: dict[str, list[str]]) -> dict[str, Any]:
    """Build ``out_dir/model.plan`` (+ ``timing.cache``) from ``model_path``; returns engine.json's
    ``tensorrt`` section. ``profile``: ``{input: ShapeRange}`` covering every dynamic input."""
    gpu = require_gpu()
    trt = import_tensorrt()
    logger = _logger_class(trt)()
    try:
        builder = trt.Builder(logger)
    except (TypeError, RuntimeError) as exc:  # pybind: "factory function returned nullptr" (no usable CUDA)
        raise EngineUnavailableError(f"TensorRT cannot create a builder on {gpu.name}: "
                                     f"{logger.last_error() if logger.messages else exc}") from exc
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model_path)):
        errors = [parser.get_error(i).desc() for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT cannot parse the model: {(errors or [logger.last_error()])[0][:300]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    config.builder_optimization_level = settings.builder_optimization_level
    if sparse_tensors:
        config.set_flag(trt.BuilderFlag.SPARSE_WEIGHTS)
    warnings = []
    cache_bytes = settings.timing_cache.read_bytes() if settings.timing_cache and settings.timing_cache.is_file() else b""
    timing_cache = config.create_timing_cache(cache_bytes)
    if not config.set_timing_cache(timing_cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: TensorRT refuses it; start from an empty one.
        warnings.append(f"timing cache {settings.timing_cache} does not match this GPU/TensorRT; started an empty one")
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)

    optimization_profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        if all(d >= 0 for d in tensor.shape):
            continue
        if tensor.name not in profile:
            raise InputError(f"input {tensor.name!r} has dynamic dims {tuple(tensor.shape)}: give "
                             f"--shapes {tensor.name}:MIN:OPT:MAX")
        shape_range = profile[tensor.name]
        if optimization_profile is None:
            optimization_profile = builder.create_optimization_profile()
        optimization_profile.set_shape(tensor.name, shape_range.min, shape_range.opt, shape_range.max)
    if optimization_profile is not None:
        config.add_optimization_profile(optimization_profile)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT could not build the engine: {logger.last_error()}")
    (out_dir / "model.plan").write_bytes(bytes(serialized))
    cache_out = bytes(config.get_timing_cache().serialize())
    (out_dir / "timing.cache").write_bytes(cache_out)
    if settings.timing_cache is not None:
        write_atomic(settings.timing_cache, cache_out)
    return {
        "version": trt.__version__,
        "gpu": {"name": gpu.name, "compute_capability": list(gpu.compute_capability)},
        "strongly_typed": True,
        "builder_optimization_level": settings.builder_optimization_level,
        "workspace_bytes": settings.workspace_bytes,
        "sparse_weights": bool(sparse_tensors),
        "sparsity_metadata": sparse_tensors,
        "warnings": (warnings + [m for sev, m in logger.messages if sev == "WARNING"])[:20],
    }


class TrtEngine:
    """A deserialized TensorRT plan with an execution context, a stream and device buffers.

    ``run(feeds)`` copies inputs to the device, executes, and copies outputs back. For profiling,
    :meth:`timed_runners` gives a ``device`` callable (inputs already on the device, execute + sync)
    and a ``host`` callable (host→device copies, execute, device→host copies, sync).

    Order of the TensorRT 10 name-based I/O calls (``execute_async_v3``): every input's shape is set
    (``set_input_shape``) before any output shape is read (``get_tensor_shape``), then every tensor's
    device address is set (``set_tensor_address``); buffers are only replaced after the stream has been
    synchronized, and the context's addresses are updated before the next execution.
    """

    kind = "trt"

    def __init__(self, plan_path: Path) -> None:
        from graphopt.engines import cuda_driver

        gpu = require_gpu()
        trt = import_tensorrt()
        cuda_driver.use_device(0)
        self._trt = trt
        self._logger = _logger_class(trt)()
        try:
            self._runtime = trt.Runtime(self._logger)
        except (TypeError, RuntimeError) as exc:  # pybind: "factory function returned nullptr"
            raise EngineUnavailableError(f"TensorRT cannot create a runtime on {gpu.name}: {exc}") from exc
        self.engine = self._runtime.deserialize_cuda_engine(plan_path.read_bytes())
        if self.engine is None:
            raise InputError(f"TensorRT cannot load {plan_path} on {gpu.name}: {self._logger.last_error()} "
                             "(built for another GPU or TensorRT version? rebuild with `graphopt build`)")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        shape_tensors = [n for n in self.input_names if self.engine.is_shape_inference_io(n)]
        if shape_tensors:  # their values live in host memory; this runner binds device buffers only
            raise InputError(f"engine input(s) {', '.join(shape_tensors)} are shape tensors (values that set "
                             "shapes), which graphopt's TensorRT runner does not feed; make them constants")
        self._dtypes = {n: numpy_dtype(self.engine.get_tensor_dtype(n), repr(n)) for n in names}
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise InputError(f"TensorRT cannot create an execution context for {plan_path} on {gpu.name}: "
                             f"{self._logger.last_error()} (out of GPU memory?)")
        self.stream = cuda_driver.Stream()
        self.providers = [f"TensorRT {trt.__version__}"]
        self._buffers: dict[str, Any] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}

    @property
    def input_specs(self) -> list[InputSpec]:
        specs = []
        for name in self.input_names:
            dims = tuple(d if d >= 0 else None for d in self.engine.get_tensor_shape(name))
            specs.append(InputSpec(name, self._dtypes[name], dims))
        return specs

    def dtype(self, name: str) -> np.dtype:
        """The numpy dtype of I/O tensor ``name`` (:func:`numpy_dtype`)."""
        return self._dtypes[name]

    def profile(self) -> dict:
        """The engine's optimization profile 0 as ``{input: ShapeRange}`` (dynamic inputs only)."""
        from graphopt.engines.shapes import ShapeRange

        ranges = {}
        for spec in self.input_specs:
            if any(d is None for d in spec.shape):
                low, opt, high = self.engine.get_tensor_profile_shape(spec.name, 0)
                ranges[spec.name] = ShapeRange(tuple(low), tuple(opt), tuple(high))
        return ranges

    def _bind(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Set input shapes, (re)allocate device buffers, set tensor addresses; returns host output arrays."""
        from graphopt.engines import cuda_driver
        from graphopt.engines.shapes import check_within

        check_within(self.profile(), {n: feeds[n].shape for n in self.input_names})
        for name in self.input_names:
            shape = tuple(feeds[name].shape)
            if not self.context.set_input_shape(name, shape):
                expected = tuple(d if d >= 0 else "N" for d in self.engine.get_tensor_shape(name))
                raise InputError(f"input {name!r} of shape {shape} does not fit the engine's input {expected}: "
                                 f"{self._logger.last_error()}")
        outputs = {}
        for name in self.input_names + self.output_names:
            shape = tuple(self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InputError(f"output {name!r} has a data-dependent shape {shape}; graphopt's TensorRT runner "
                                 "needs shapes known from the inputs")
            dtype = self._dtypes[name]
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            buffer = self._buffers.get(name)
            if buffer is None or buffer.nbytes < nbytes:
                buffer = self._buffers[name] = cuda_driver.DeviceBuffer(nbytes)
            if not self.context.set_tensor_address(name, buffer.pointer):
                raise EngineRunError(f"TensorRT refused the device address of {name!r}: {self._logger.last_error()}")
            self._shapes[name] = shape
            if name in self.output_names:
                outputs[name] = np.empty(shape, dtype)
        return outputs

    def _cast(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise InputError(f"no data for engine input(s) {', '.join(missing)}")
        return {n: np.ascontiguousarray(feeds[n], dtype=self._dtypes[n]) for n in self.input_names}

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.stream.handle):
            raise EngineRunError(f"TensorRT execution failed: {self._logger.last_error()}")

    def _round_trip(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Inputs to the device, execute, outputs back to ``outputs``, wait for the stream."""
        for name in self.input_names:
            self._buffers[name].upload(feeds[name], self.stream)
        self._execute()
        for name, array in outputs.items():
            self._buffers[name].download(array, self.stream)
        self.stream.synchronize()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs for ``feeds``; bf16 / fp8 outputs come back as float32 (same values) for comparisons."""
        feeds = self._cast(feeds)
        outputs = self._bind(feeds)
        self._round_trip(feeds, outputs)
        return {name: array.astype(np.float32) if array.dtype.kind == "V" else array
                for name, array in outputs.items()}

    def timed_runners(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """``{"device": execute only, "host": copies + execute}`` for ``feeds`` (bound once here)."""
        feeds = self._cast(feeds)
        outputs = self._bind(feeds)
        for name in self.input_names:
            self._buffers[name].upload(feeds[name], self.stream)
        self.stream.synchronize()

        def device() -> None:
            self._execute()
            self.stream.synchronize()

        return {"device": device, "host": lambda: self._round_trip(feeds, outputs)}
