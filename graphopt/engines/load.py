"""Open what the profiler and ``graphopt compare`` run: an ONNX model on a provider, or an engine directory.

* an ONNX file → an onnxruntime session on the requested provider (``cpu`` / ``cuda`` / ``trt``), its
  loaded providers checked (:func:`graphopt.engines.providers.create_session`);
* an engine directory → what its ``engine.json`` says: an onnxruntime session from ``model.onnx`` with
  the recorded providers and options, or a TensorRT plan (compatibility checked before the plan is
  deserialized, :func:`graphopt.engines.manifest.check_compatible`).

Every opened engine has ``input_specs``, ``output_names``, ``providers``, ``run(feeds)``, a
``profile`` of allowed input shapes, and says whether it runs on a GPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from graphopt.data import InputSpec
from graphopt.engines.manifest import ENGINE_JSON, EngineManifest, check_compatible
from graphopt.engines.providers import (
    GPU_PROVIDERS,
    PROVIDER_NAMES,
    TrtProviderSettings,
    create_session,
    provider_request,
)
from graphopt.engines.shapes import Profile, ShapeRange
from graphopt.errors import InputError
from graphopt.model_io import load_proto

if TYPE_CHECKING:
    import onnx_ir as ir


@dataclasses.dataclass
class OpenedEngine:
    """An engine ready to run, with what it is and what really runs it."""

    label: str
    kind: str
    """``ort`` or ``trt``."""
    runner: Any
    """An :class:`graphopt.engines.ort.OrtEngine` or a :class:`graphopt.engines.trt.TrtEngine`."""
    requested: str
    """The provider asked for (``cpu`` / ``cuda`` / ``trt``)."""
    providers: list[str]
    fallback_reason: str | None = None
    profile: Profile = dataclasses.field(default_factory=dict)
    warnings: list[str] = dataclasses.field(default_factory=list)
    manifest: EngineManifest | None = None

    @property
    def on_gpu(self) -> bool:
        return self.kind == "trt" or any(p in GPU_PROVIDERS for p in self.providers[:1])

    @property
    def input_specs(self) -> list[InputSpec]:
        if self.kind == "trt":
            return self.runner.input_specs
        from graphopt.engines.ort import session_input_specs

        return session_input_specs(self.runner.session)

    @property
    def output_names(self) -> list[str]:
        return list(self.runner.output_names)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from graphopt.engines.shapes import check_within

        check_within(self.profile, {k: v.shape for k, v in feeds.items()}, f"engine {self.label}")
        return self.runner.run(feeds)


def is_engine_dir(path: str | os.PathLike) -> bool:
    return Path(path).is_dir()


def open_engine(path: str | os.PathLike, provider: str | None = None, *, threads: int | None = None,
                allow_fallback: bool = False, spinning: bool = True, label: str | None = None) -> OpenedEngine:
    """Open an ONNX model (on ``provider``, default ``cpu``) or an engine directory (on its own target)."""
    path = Path(path)
    label = label or path.name
    if provider is not None and provider not in PROVIDER_NAMES:
        raise InputError(f"unknown provider '{provider}'; choose one of {', '.join(PROVIDER_NAMES)}")
    if is_engine_dir(path):
        manifest = EngineManifest.read(path)
        built_for = manifest.target.get("kind")
        if provider is not None and provider != built_for:
            raise InputError(f"engine {path} was built for target {built_for}; drop --provider {provider} "
                             f"or rebuild it with --target {provider}")
        if manifest.engine == "trt":
            return _open_trt(path, manifest, label)
        return _open_ort_dir(path, manifest, label, threads, allow_fallback, spinning)
    if not path.exists():
        raise InputError(f"model or engine not found: {path}")
    load_proto(path)  # a one-line error for a file that is not a model
    return open_model(path, provider or "cpu", threads=threads, allow_fallback=allow_fallback,
                      spinning=spinning, label=label)


def open_model(model: bytes | Path | ir.Model, provider: str = "cpu", *, threads: int | None = None, allow_fallback: bool = False,
               spinning: bool = True, label: str = "model", trt_cache: Path | None = None) -> OpenedEngine:
    """An onnxruntime engine for ``model`` (serialized, a path, or an ``onnx_ir`` model) on ``provider``,
    providers checked."""
    from graphopt.engines.ort import OrtEngine, session_options

    settings = TrtProviderSettings(cache_dir=trt_cache) if provider == "trt" else None
    checked = create_session(model, provider_request(provider, settings), session_options(threads, spinning=spinning),
                             allow_fallback=allow_fallback)
    return OpenedEngine(label, "ort", OrtEngine(checked.session, checked.providers, checked.weights), provider, checked.providers,
                        checked.fallback_reason)


def _open_ort_dir(path: Path, manifest: EngineManifest, label: str, threads: int | None, allow_fallback: bool,
                  spinning: bool) -> OpenedEngine:
    from graphopt.engines.ort import OrtEngine, session_options
    from graphopt.engines.providers import ProviderRequest

    recorded = manifest.ort or {}
    providers = tuple(recorded.get("providers_requested") or ())
    options = tuple(_absolute_options(o, path) for o in recorded.get("provider_options") or ())
    if not providers or len(providers) != len(options):
        raise InputError(f"{path / ENGINE_JSON}: no provider list recorded; rebuild the engine")
    request = ProviderRequest(manifest.target.get("kind", "cpu"), providers, options)
    threads = threads if threads is not None else (recorded.get("intra_op_num_threads") or None)
    checked = create_session(path / _file(manifest, path, "model"), request,
                             session_options(threads, recorded.get("graph_optimization_level", "all"), spinning=spinning),
                             allow_fallback=allow_fallback)
    return OpenedEngine(label, "ort", OrtEngine(checked.session, checked.providers), request.target, checked.providers,
                        checked.fallback_reason, _profile(manifest), manifest=manifest)


def _file(manifest: EngineManifest, path: Path, role: str) -> str:
    """The file engine.json lists for ``role`` (one line when it lists none)."""
    name = manifest.files.get(role)
    if not name:
        raise InputError(f"{path / ENGINE_JSON}: no {role} file listed for a {manifest.engine} engine; rebuild it")
    return name


def _absolute_options(options: dict[str, str], directory: Path) -> dict[str, str]:
    return {k: (str(directory / v) if k.endswith("_path") and not os.path.isabs(v) else v) for k, v in options.items()}


def _profile(manifest: EngineManifest) -> Profile:
    return {name: ShapeRange.from_dict(raw) for name, raw in (manifest.profile or {}).items()}


def _open_trt(path: Path, manifest: EngineManifest, label: str) -> OpenedEngine:
    from graphopt.engines.trt import TrtEngine, tensorrt_version
    from graphopt.target import cuda_gpus

    gpus = cuda_gpus()
    warnings = check_compatible(manifest, tensorrt_version(),
                                (gpus[0].name, gpus[0].compute_capability) if gpus else None)
    engine = TrtEngine(path / _file(manifest, path, "plan"))
    return OpenedEngine(label, "trt", engine, "trt", engine.providers, None, engine.profile(), warnings, manifest)
