"""Content-addressed cache of pass results.

key = sha256(input model hash, pass name + options fingerprint, data fingerprints, target,
library versions). A re-run with one changed option redoes only the passes from that one on,
because each pass's key chains from the hash of the model it received.

Location: ``$GRAPHOPT_CACHE_DIR``, else ``~/.cache/graphopt``; ``--cache-dir`` / ``--no-cache``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import onnx_ir as ir

from graphopt.model_io import PROTOBUF_LIMIT_BYTES, initializer_bytes, load_model, save_model
from graphopt.versions import library_versions

CACHE_ENV = "GRAPHOPT_CACHE_DIR"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "graphopt")


class PassCache:
    """Stores ``<key>.onnx`` (the pass's output model) and ``<key>.json`` (its stats) per key."""

    def __init__(self, root: Path | None = None, enabled: bool = True) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled

    @staticmethod
    def key(model_hash: str, fingerprint: dict, extra: dict) -> str:
        payload = json.dumps(
            {"model": model_hash, "pass": fingerprint, "extra": extra, "versions": library_versions()},
            sort_keys=True, default=str,
        )
        return hashlib.sha256(payload.encode()).hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        folder = self.root / key[:2]
        return folder / f"{key}.onnx", folder / f"{key}.json"

    def get(self, key: str) -> tuple[ir.Model, dict] | None:
        if not self.enabled:
            return None
        model_path, meta_path = self._paths(key)
        if not (model_path.exists() and meta_path.exists()):
            return None
        try:
            return load_model(model_path), json.loads(meta_path.read_text())
        except Exception:  # a damaged entry is a miss, never an error
            return None

    def put(self, key: str, model: ir.Model, meta: dict) -> None:
        if not self.enabled or initializer_bytes(model) > PROTOBUF_LIMIT_BYTES // 2:
            return
        model_path, meta_path = self._paths(key)
        with contextlib.suppress(OSError):
            model_path.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, model_path)
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta, default=str))
            os.replace(tmp, meta_path)
