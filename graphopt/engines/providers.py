"""onnxruntime execution providers for a target, with the providers that really loaded checked.

Providers and options per target:

* ``cpu`` → ``CPUExecutionProvider``;
* ``cuda`` → ``CUDAExecutionProvider`` (cuDNN convolution algorithm search ``EXHAUSTIVE``) then CPU for
  the nodes CUDA has no kernel for;
* ``trt`` → ``TensorrtExecutionProvider`` (engine and timing caches in a folder the caller names,
  workspace limit, builder optimization level, optimization profiles for dynamic inputs, sparsity when
  the model carries 2:4 metadata; ``trt_fp16_enable`` / ``trt_int8_enable`` off, so onnxruntime builds a
  strongly typed network that keeps the precision graphopt's passes wrote into the graph), then CUDA,
  then CPU.

Without an NVIDIA GPU answering through the CUDA driver, the CUDA and TensorRT providers are not even
handed to onnxruntime (creating them touches CUDA and TensorRT, which is only done after a GPU answered);
they count as not loaded, with that reason.

onnxruntime falls back to the next provider without raising when one cannot load (no GPU, missing
CUDA or TensorRT libraries), printing an "EP Error" banner on stdout and log lines on stderr.
:func:`create_session` captures that output (see :mod:`graphopt.engines.capture`), reads
``session.get_providers()`` and raises :class:`ProviderUnavailableError` naming the provider that
did not load and why — unless ``allow_fallback``, in which case the session and the providers that
really loaded are returned with the reason, so a CPU run is never reported as a GPU result.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING

from graphopt.engines.capture import CapturedOutput, captured_output
from graphopt.errors import InputError

if TYPE_CHECKING:
    import onnx
    import onnx_ir as ir

PROVIDER_NAMES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}
"""Short provider names used on the command line → onnxruntime's names."""

GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")

DEFAULT_TRT_WORKSPACE = 4 << 30
"""TensorRT workspace limit (bytes) when the caller gives none."""


class ProviderUnavailableError(InputError):
    """The execution provider a target needs did not load (exit 2)."""

    def __init__(self, provider: str, reason: str, fallback: str) -> None:
        super().__init__(f"{provider} did not load: {reason}; pass --allow-fallback to run on {fallback} "
                         "instead (the report will say so)")
        self.provider = provider
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class TrtProviderSettings:
    """What the TensorRT execution provider is told (see the module docstring)."""

    fp16: bool = False
    """``trt_fp16_enable``: TensorRT may run fp32 layers in fp16 (a weakly typed network). graphopt's own
    builds leave it off: its fp16 models carry fp16 in the graph, and its fallback layers must stay fp32."""
    int8: bool = False
    """``trt_int8_enable``: implicit int8 (weakly typed); off for graphopt's Q/DQ models (explicit quantization)."""
    cache_dir: Path | None = None
    """Engine and timing caches go here; ``None``: no caches."""
    workspace_bytes: int = DEFAULT_TRT_WORKSPACE
    builder_optimization_level: int = 3
    sparsity: bool = False
    profile_shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] | None = None
    """``{input: (min, opt, max)}`` for dynamic inputs."""


@dataclasses.dataclass(frozen=True)
class ProviderRequest:
    """The providers (best first) and their options that a target asks onnxruntime for."""

    target: str
    providers: tuple[str, ...]
    options: tuple[dict[str, str], ...]

    @property
    def primary(self) -> str:
        return self.providers[0]

    def to_dict(self) -> dict:
        return {"target": self.target, "providers": list(self.providers), "provider_options": [dict(o) for o in self.options]}


def provider_request(target: str, trt: TrtProviderSettings | None = None, device_id: int = 0) -> ProviderRequest:
    """Providers and options for ``target`` (``cpu`` / ``cuda`` / ``trt``)."""
    if target not in PROVIDER_NAMES:
        raise InputError(f"unknown provider '{target}'; choose one of {', '.join(PROVIDER_NAMES)}")
    cpu = ("CPUExecutionProvider", {})
    cuda = ("CUDAExecutionProvider", {"device_id": str(device_id), "cudnn_conv_algo_search": "EXHAUSTIVE"})
    chosen: list[tuple[str, dict[str, str]]]
    if target == "cpu":
        chosen = [cpu]
    elif target == "cuda":
        chosen = [cuda, cpu]
    else:
        chosen = [("TensorrtExecutionProvider", trt_options(trt or TrtProviderSettings(), device_id)), cuda, cpu]
    return ProviderRequest(target, tuple(p for p, _ in chosen), tuple(o for _, o in chosen))


def trt_options(settings: TrtProviderSettings, device_id: int = 0) -> dict[str, str]:
    """The TensorRT execution provider's options (onnxruntime's ``trt_*`` keys) for ``settings``."""
    options = {
        "device_id": str(device_id),
        "trt_max_workspace_size": str(settings.workspace_bytes),
        "trt_fp16_enable": _flag(settings.fp16),
        "trt_int8_enable": _flag(settings.int8),
        "trt_builder_optimization_level": str(settings.builder_optimization_level),
        "trt_sparsity_enable": _flag(settings.sparsity),
    }
    if settings.cache_dir is not None:
        options.update({
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(settings.cache_dir),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(settings.cache_dir),
        })
    if settings.profile_shapes:
        for key, index in (("trt_profile_min_shapes", 0), ("trt_profile_opt_shapes", 1), ("trt_profile_max_shapes", 2)):
            options[key] = ",".join(f"{name}:{'x'.join(map(str, dims[index]))}"
                                    for name, dims in settings.profile_shapes.items())
    return options


def _flag(value: bool) -> str:
    return "True" if value else "False"


@dataclasses.dataclass
class CheckedSession:
    """An onnxruntime session, the providers that really loaded, and why a requested one did not."""

    session: object
    providers: list[str]
    requested: ProviderRequest
    fallback_reason: str | None
    """``None`` when the requested primary provider loaded."""
    log: list[str]
    """What onnxruntime printed while the session was created (captured, not shown)."""
    weights: list = dataclasses.field(default_factory=list, repr=False)
    """``OrtValue``s of weights handed to the session by reference (kept alive with it)."""

    @property
    def fell_back(self) -> bool:
        return self.fallback_reason is not None


def create_session(model: bytes | str | Path | ir.Model | onnx.ModelProto, request: ProviderRequest, session_options, *,
                   allow_fallback: bool = False) -> CheckedSession:
    """Create a session for ``request`` and check that its primary provider really loaded.

    Raises :class:`ProviderUnavailableError` (one line: which provider, why, what to do) unless
    ``allow_fallback``; the banner and log lines onnxruntime prints are captured either way.
    """
    import onnxruntime as ort

    from graphopt.engines.ort import session_source
    from graphopt.target import cuda_gpus

    available = set(ort.get_available_providers())
    usable = available if cuda_gpus() else available - set(GPU_PROVIDERS)
    providers = [p for p in request.providers if p in usable] or ["CPUExecutionProvider"]
    options = [o for p, o in zip(request.providers, request.options) if p in usable] or [{}]
    with captured_output() as captured:
        source, disabled, weights = session_source(model, session_options)
        session = ort.InferenceSession(source, session_options, providers=list(zip(providers, options)),
                                       disabled_optimizers=disabled)
    loaded = list(session.get_providers())
    reason = None
    if request.primary not in loaded:
        reason = unavailable_reason(request.primary, available, captured)
        if not allow_fallback:
            raise ProviderUnavailableError(request.primary, reason, loaded[0])
    return CheckedSession(session, loaded, request, reason, captured.lines, weights)


def unavailable_reason(provider: str, available: set[str], captured: CapturedOutput | None = None) -> str:
    """Why ``provider`` did not load, in one clause, most actionable cause first."""
    from graphopt.target import cuda_gpus

    if provider == "CPUExecutionProvider":
        return "onnxruntime could not create its CPU provider"
    if provider not in available:
        return f"this onnxruntime build has no {provider} (install onnxruntime-gpu)"
    causes = []
    if not cuda_gpus():
        causes.append("no NVIDIA GPU answered through the CUDA driver (libcuda)")
    library = _missing_library(captured.text if captured else "", provider)
    if library:
        causes.append(f"onnxruntime could not load {library}")
    if not causes:
        said = _first_error_line(captured.text if captured else "")
        causes.append(f"onnxruntime said: {said}" if said else "onnxruntime gave no reason")
    return "; ".join(causes)


_LIBRARY_ERROR = re.compile(r"Failed to load library (\S+) with error: ([^:\n]+)")


_PROVIDER_LIBRARY = {"CUDAExecutionProvider": "providers_cuda", "TensorrtExecutionProvider": "providers_tensorrt"}


def _missing_library(text: str, provider: str) -> str | None:
    """``libonnxruntime_providers_cuda.so (libcublasLt.so.13 missing)`` from onnxruntime's log."""
    token = _PROVIDER_LIBRARY.get(provider, "")
    for match in _LIBRARY_ERROR.finditer(text):
        if token in match.group(1):
            return f"{Path(match.group(1)).name} ({match.group(2).strip()} missing)"
    return None


def _first_error_line(text: str) -> str | None:
    for line in text.splitlines():
        if "EP Error" in line and "****" not in line:
            return line.split("EP Error", 1)[1].strip()[:200]
        if "[E:onnxruntime" in line:
            return line.split("]", 1)[-1].strip()[:200]
    return None


def check_provider_loads(target: str) -> None:
    """Raise :class:`ProviderUnavailableError` now unless ``target``'s primary provider loads here
    (a one-node model is enough), so a long run does not fail at its end."""
    from graphopt.engines.ort import probe_model, session_options

    create_session(probe_model(), provider_request(target), session_options())
