"""``engine.json``: what an engine directory holds, what it was built from, and for which hardware.

Written last (atomically) by every engine build, read first by every load: a directory without it is
not an engine; a TensorRT plan is only deserialized after :func:`check_compatible` has compared the
TensorRT version and GPU recorded here with this machine's (a plan is tied to both; TensorRT can
crash on a foreign one instead of failing cleanly).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path
from typing import Any

from graphopt.errors import InputError

ENGINE_JSON = "engine.json"
FORMAT = 1


class EngineMismatchError(InputError):
    """An engine built for another GPU or library version (exit 2)."""


@dataclasses.dataclass(frozen=True)
class EngineManifest:
    engine: str
    """``ort`` or ``trt``."""
    target: dict[str, Any]
    source: dict[str, Any]
    """``path``, ``sha256`` (file bytes) and ``model_hash`` (graphopt's content hash) of the model built from."""
    precision: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    profile: dict[str, dict[str, list[int]]]
    """Optimization profile per dynamic input: ``{"min": [...], "opt": [...], "max": [...]}``."""
    files: dict[str, str]
    """Role (``model``, ``plan``, ``timing_cache``, ``trt_cache``) → path relative to the directory."""
    versions: dict[str, str]
    ort: dict[str, Any] | None = None
    tensorrt: dict[str, Any] | None = None
    created: str = ""
    format: int = FORMAT

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, directory: Path) -> Path:
        """Write ``directory/engine.json`` atomically."""
        from graphopt.model_io import write_atomic

        return write_atomic(directory / ENGINE_JSON, json.dumps(self.to_dict(), indent=2, default=str))

    @classmethod
    def read(cls, directory: Path) -> EngineManifest:
        """Read and check ``directory/engine.json``; one-line errors for every way it can be wrong."""
        directory = Path(directory)
        if not directory.exists():
            raise InputError(f"engine directory not found: {directory}")
        if not directory.is_dir():
            raise InputError(f"not an engine directory (a file): {directory}")
        path = directory / ENGINE_JSON
        if not path.is_file():
            raise InputError(f"not an engine directory: {path} is missing (build one with `graphopt build`)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read {path}: {exc}") from exc
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise InputError(f"{path}: unknown engine.json format {raw.get('format') if isinstance(raw, dict) else raw!r} "
                             f"(this graphopt reads format {FORMAT}); rebuild the engine")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names - set(raw) if n not in ("ort", "tensorrt", "created", "format"))
        if missing:
            raise InputError(f"{path}: missing field(s) {', '.join(missing)}; rebuild the engine")
        manifest = cls(**{k: v for k, v in raw.items() if k in names})
        for role, name in manifest.files.items():
            if not (directory / name).exists():
                raise InputError(f"engine file missing: {directory / name} ({role}, listed in {ENGINE_JSON})")
        return manifest


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def check_compatible(manifest: EngineManifest, tensorrt_version: str | None,
                     gpu: tuple[str, tuple[int, int]] | None) -> list[str]:
    """Refuse a TensorRT plan built for another TensorRT version or GPU architecture.

    A plan runs only with the TensorRT version that built it and on GPUs of the same compute
    capability (graphopt builds without TensorRT's version- or hardware-compatibility modes). Another
    GPU name with the same compute capability loads but may not be tuned for it: returned as a warning.
    """
    recorded = manifest.tensorrt or {}
    built_gpu = recorded.get("gpu") or {}
    built_cc = tuple(built_gpu.get("compute_capability") or ())
    built_on = f"TensorRT {recorded.get('version')} on {built_gpu.get('name')} (sm_{''.join(map(str, built_cc))})"
    if tensorrt_version is None:
        raise EngineMismatchError(f"engine was built with {built_on}; TensorRT is not installed here "
                                  "(pip install 'graphopt[trt]')")
    if gpu is None:
        raise EngineMismatchError(f"engine was built with {built_on}; this machine has no NVIDIA GPU")
    name, capability = gpu
    here = f"TensorRT {tensorrt_version} on {name} (sm_{''.join(map(str, capability))})"
    if recorded.get("version") != tensorrt_version or built_cc != tuple(capability):
        raise EngineMismatchError(f"engine was built with {built_on}; this machine has {here}: "
                                  "rebuild it here with `graphopt build`")
    if built_gpu.get("name") != name:
        return [f"engine was built on {built_gpu.get('name')}, this GPU is {name} (same architecture): "
                "it loads, but rebuild for the best kernels"]
    return []
