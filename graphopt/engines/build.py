"""``graphopt build``: an engine directory for a target — ONNX Runtime session files or a TensorRT plan.

Layout of ``OUT_DIR`` (described by its ``engine.json``, :mod:`graphopt.engines.manifest`):

* ``ort``: ``model.onnx``, the model after onnxruntime's *basic* graph optimizations (constant folding,
  redundant-node removal: provider-independent rewrites, so the file stays portable — the extended
  and layout levels write CPU-specific fused ops and NCHWc layouts that only run on the machine that
  wrote them); the session settings (providers, provider options, optimization level at load,
  threads) are recorded in engine.json and applied by :func:`graphopt.engines.load.load_engine`. For
  ``trt`` the TensorRT provider's engine and timing caches are written into ``trt_cache/`` by a
  warm-up run, so the first real request does not pay the TensorRT build.
* ``trt``: ``model.plan`` (serialized TensorRT engine) and ``timing.cache``, built by
  :func:`graphopt.engines.trt.build_plan`.

The directory is built in a staging folder beside ``OUT_DIR`` and renamed into place at the end: an
interrupted build leaves nothing, and an earlier engine directory is replaced only by a finished one.
A non-empty folder that is not an engine directory is never overwritten.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import onnx
import onnx_ir as ir

from graphopt.data import DataSet, input_specs
from graphopt.engines.manifest import ENGINE_JSON, EngineManifest, now
from graphopt.engines.providers import TrtProviderSettings, create_session, provider_request
from graphopt.engines.shapes import Profile, check_profile, derive_profile
from graphopt.errors import InputError
from graphopt.model_io import (
    file_hash,
    load_model,
    model_hash,
    new_file_mode,
    same_file,
    save_model,
)
from graphopt.target import TARGET_KINDS
from graphopt.versions import library_versions

EngineKind = Literal["ort", "trt"]
ENGINE_KINDS: tuple[str, ...] = ("ort", "trt")


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """How to build an engine (the objects ``graphopt build`` and ``optimize --engine`` create)."""

    engine: EngineKind = "ort"
    target: str = "cpu"
    allow_fallback: bool = False
    shapes: Profile | None = None
    """Shape ranges the user gave (``--shapes``); the rest of the dynamic inputs are derived."""
    batches: tuple[int, ...] = (1,)
    """Batch sizes the engine must serve (the derived profile spans them)."""
    threads: int | None = None
    workspace_bytes: int = 4 << 30
    builder_optimization_level: int = 3
    timing_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINE_KINDS:
            raise InputError(f"unknown engine '{self.engine}'; choose one of {', '.join(ENGINE_KINDS)}")
        if self.target not in TARGET_KINDS:
            raise InputError(f"unknown target '{self.target}'; choose one of {', '.join(TARGET_KINDS)}")
        if self.engine == "trt" and self.target != "trt":
            raise InputError(f"a TensorRT engine runs on target trt, not {self.target}; use --engine ort for {self.target}")
        if not self.batches or min(self.batches) < 1:
            raise InputError(f"batch sizes must be ≥ 1, got {list(self.batches)}")


def check_engine_dir(out_dir: Path, model_path: Path | None) -> None:
    """Refuse an output that is the model, a file, or a non-empty folder that is not an engine directory."""
    if model_path is not None and (same_file(out_dir, model_path) or out_dir.resolve() in model_path.resolve().parents):
        raise InputError(f"engine directory {out_dir} would overwrite the input model; choose another -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"engine output is a file, not a folder: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / ENGINE_JSON).is_file():
        raise InputError(f"{out_dir} is a non-empty folder without {ENGINE_JSON}; refusing to overwrite it")
    parent = out_dir.parent if str(out_dir.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"output folder does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise InputError(f"output folder is not writable: {parent}")


def preflight(options: BuildOptions) -> None:
    """Fail now, before any long work, when the engine cannot be built here: TensorRT without a GPU or
    TensorRT, or an onnxruntime target whose provider does not load (unless ``allow_fallback``)."""
    if options.engine == "trt":
        from graphopt.engines.trt import import_tensorrt

        import_tensorrt()
    elif options.target != "cpu" and not options.allow_fallback:
        from graphopt.engines.providers import check_provider_loads

        check_provider_loads(options.target)


def build_engine(model: str | os.PathLike | onnx.ModelProto | ir.Model, out_dir: str | os.PathLike,
                 options: BuildOptions = BuildOptions(), data: DataSet | None = None) -> EngineManifest:
    """Build an engine directory for ``model`` (see the module docstring); returns its manifest."""
    out_dir = Path(out_dir)
    model_path = Path(model) if isinstance(model, str | os.PathLike) else None
    check_engine_dir(out_dir, model_path)
    preflight(options)
    loaded = load_model(model)
    specs = input_specs(loaded)
    if data is not None:
        data = data.check_against(specs, "shape")
    # TensorRT (plan or provider) needs a range for every dynamic input; onnxruntime's CPU and CUDA
    # providers take any shape, so there only the ranges the user gave are recorded (and enforced).
    if options.target == "trt":
        profile = derive_profile(specs, options.batches, data, options.shapes)
    else:
        profile = dict(options.shapes or {})
        check_profile(profile, specs)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent if str(out_dir.parent) else "."))
    try:
        source_file = staging / "source.onnx"
        save_model(loaded, source_file)  # external data when the model is large or came with it
        source = {"path": str(model_path) if model_path else None,
                  "sha256": file_hash(model_path) if model_path else None,
                  "model_hash": model_hash(loaded)}
        if options.engine == "ort":
            manifest = _build_ort(source_file, staging, options, profile, specs, data, source)
        else:
            manifest = _build_trt(source_file, staging, options, profile, source)
        for leftover in (source_file, source_file.with_name(source_file.name + ".data")):
            leftover.unlink(missing_ok=True)
        manifest.write(staging)
        os.chmod(staging, new_file_mode(directory=True))  # mkdtemp makes 0700
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _replace_dir(staging: Path, out_dir: Path) -> None:
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old.{os.getpid()}")
        os.replace(out_dir, old)
        os.replace(staging, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _io_rows(values) -> list[dict]:
    from graphopt.engines.ort import ort_type_name

    return [{"name": v.name, "dtype": ort_type_name(v.type), "shape": list(v.shape)} for v in values]


def _precision(path: Path) -> tuple[str, dict]:
    from graphopt.inspection import model_precision

    info = model_precision(load_model(path))
    return info["summary"], info


def _build_ort(source_file: Path, staging: Path, options: BuildOptions, profile: Profile, specs,
               data: DataSet | None, source: dict) -> EngineManifest:
    import onnxruntime as ort

    from graphopt.engines.ort import session_options

    precision, _ = _precision(source_file)
    optimized = staging / "model.onnx"
    writer = session_options(options.threads, optimization="basic")
    writer.optimized_model_filepath = str(optimized)
    if source_file.with_name(source_file.name + ".data").exists():  # save_model chose external data
        writer.add_session_config_entry("session.optimized_model_external_initializers_file_name", "model.onnx.data")
    ort.InferenceSession(str(source_file), writer, providers=["CPUExecutionProvider"])
    files = {"model": "model.onnx"}
    if (staging / "model.onnx.data").exists():
        files["model_data"] = "model.onnx.data"
    trt_settings = None
    if options.target == "trt":
        (staging / "trt_cache").mkdir()
        files["trt_cache"] = "trt_cache"
        trt_settings = _trt_provider_settings(staging / "trt_cache", options, profile, source_file)
    request = provider_request(options.target, trt_settings)
    checked = create_session(optimized, request, session_options(options.threads), allow_fallback=options.allow_fallback)
    _warm_up(checked.session, specs, options.batches, profile, data)
    return EngineManifest(
        engine="ort", target=_target_dict(options.target), source=source, precision=precision,
        inputs=_io_rows(checked.session.get_inputs()), outputs=_io_rows(checked.session.get_outputs()),
        profile={name: r.to_dict() for name, r in profile.items()}, files=files, versions=library_versions(),
        ort={"providers_requested": list(request.providers),
             "provider_options": [_portable_options(o, staging) for o in request.options],
             "providers": checked.providers, "fallback_reason": checked.fallback_reason,
             "provider_log": checked.log[:20] if checked.fell_back else [],
             "graph_optimization_level": "all", "saved_model_optimization": "basic",
             "intra_op_num_threads": options.threads or 0},
        created=now())


def _trt_provider_settings(cache_dir: Path, options: BuildOptions, profile: Profile,
                           source_file: Path) -> TrtProviderSettings:
    """The TensorRT provider's settings for a graphopt model. ``trt_fp16_enable`` / ``trt_int8_enable`` stay
    off whatever the model's precision: the graph already carries it (fp16 tensors, Q/DQ pairs), and with
    either flag on onnxruntime builds a *weakly* typed network, letting TensorRT run in fp16 the layers
    graphopt kept in fp32 on purpose (TensorRT 11 removed those builder flags altogether)."""
    from graphopt.engines.trt import sparse_24_tensors

    sparse = sparse_24_tensors(onnx.load(str(source_file), load_external_data=False))
    return TrtProviderSettings(
        cache_dir=cache_dir,
        workspace_bytes=options.workspace_bytes, builder_optimization_level=options.builder_optimization_level,
        sparsity=bool(sparse),
        profile_shapes={name: (r.min, r.opt, r.max) for name, r in profile.items()} or None)


def _portable_options(options: dict[str, str], staging: Path) -> dict[str, str]:
    """Provider options with paths inside the engine directory made relative to it."""
    return {k: (os.path.relpath(v, staging) if k.endswith("_path") and v.startswith(str(staging)) else v)
            for k, v in options.items()}


def _warm_up(session, specs, batches, profile: Profile, data: DataSet | None) -> None:
    """One run at every batch size (builds the TensorRT provider's engines into its cache now)."""
    from graphopt.profiling.feeds import make_feeds

    for batch in sorted(set(batches)):
        feeds = make_feeds(specs, batch, profile, data)
        session.run(None, feeds)


def _target_dict(kind: str) -> dict:
    from graphopt.target import make_target

    return make_target(kind).to_dict()


def _build_trt(source_file: Path, staging: Path, options: BuildOptions, profile: Profile,
               source: dict) -> EngineManifest:
    from graphopt.engines.trt import TrtBuildSettings, TrtEngine, build_plan, sparse_24_tensors

    precision, _ = _precision(source_file)
    sparse = sparse_24_tensors(onnx.load(str(source_file), load_external_data=False))
    settings = TrtBuildSettings(options.workspace_bytes, options.builder_optimization_level, options.timing_cache)
    section = build_plan(source_file, staging, profile, settings, sparse)
    engine = TrtEngine(staging / "model.plan")
    rows = {}
    for name in engine.input_names + engine.output_names:
        rows[name] = {"name": name, "dtype": engine.dtype(name).name,
                      "shape": [int(d) for d in engine.engine.get_tensor_shape(name)]}
    section["device_memory_bytes"] = int(getattr(engine.engine, "device_memory_size_v2", 0)
                                         or getattr(engine.engine, "device_memory_size", 0))
    return EngineManifest(
        engine="trt", target=_target_dict("trt"), source=source, precision=precision,
        inputs=[rows[n] for n in engine.input_names], outputs=[rows[n] for n in engine.output_names],
        profile={name: r.to_dict() for name, r in profile.items()},
        files={"plan": "model.plan", "timing_cache": "timing.cache"}, versions=library_versions(),
        tensorrt=section, created=now())

