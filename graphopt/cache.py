"""Content-addressed cache of pass results, capped in size, least recently used evicted first.

key = sha256(input model hash, pass name + options fingerprint, data fingerprints, target,
library versions, a hash of graphopt's own sources). A re-run with one changed option redoes only the passes from that one on,
because each pass's key chains from the hash of the model it received.

Location: ``$GRAPHOPT_CACHE_DIR``, else ``~/.cache/graphopt``; ``--cache-dir`` / ``--no-cache``.
Cap: ``$GRAPHOPT_CACHE_MAX`` (``2GB``, ``500MB``, ``0`` turns writing off), else
:data:`DEFAULT_MAX_BYTES`. After each write the least recently used entries (by the time their
``.json`` was last written or read) are removed until the cache fits the cap, except those the
running pipeline read or wrote (their weights may still be read); a result larger than the whole cap
is not cached, and the pass's report row says so. ``graphopt cache info|clear``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.large import weight_bytes
from graphopt.model_io import load_model, save_model
from graphopt.versions import library_versions, source_fingerprint

CACHE_ENV = "GRAPHOPT_CACHE_DIR"
CACHE_MAX_ENV = "GRAPHOPT_CACHE_MAX"
DEFAULT_MAX_BYTES = 4 * 1024**3
"""Default cap (4 GiB): a few hundred results of ordinary models, or one pipeline of a 2 GB one."""

_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3, "T": 1024**4, "TB": 1024**4, "TIB": 1024**4}


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "graphopt")


def parse_size(text: str) -> int:
    """``"2GB"`` → bytes. Units K/M/G/T (optionally ``B`` or ``iB``) are powers of 1024, as pip's are."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise InputError(f"cannot read '{text}' as a size: write e.g. 2GB, 500MB or 0")
    return int(float(match.group(1)) * _UNITS[unit])


def default_max_bytes() -> int:
    """``$GRAPHOPT_CACHE_MAX`` or :data:`DEFAULT_MAX_BYTES`."""
    text = os.environ.get(CACHE_MAX_ENV)
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except InputError as exc:
        raise InputError(f"{CACHE_MAX_ENV}: {exc}") from None


def format_size(size: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclasses.dataclass(frozen=True)
class CacheEntry:
    """One cached pass result: its files and when it was last written or read."""

    key: str
    files: tuple[Path, ...]
    size: int
    last_used: float


class PassCache:
    """Stores ``<key>.onnx`` (+ ``<key>.onnx.data`` for models over 2 GB) and ``<key>.json`` per key."""

    def __init__(self, root: Path | None = None, enabled: bool = True, max_bytes: int | None = None) -> None:
        self.root = Path(root) if root else default_cache_dir()
        self.enabled = enabled
        self.max_bytes = max_bytes if max_bytes is not None else (default_max_bytes() if enabled else 0)
        self._in_use: set[str] = set()
        """Keys this cache object served or stored: their models may still be read (weights in files are
        read lazily), so eviction leaves them alone."""

    @staticmethod
    def key(model_hash: str, fingerprint: dict, extra: dict) -> str:
        payload = json.dumps(
            {"model": model_hash, "pass": fingerprint, "extra": extra, "versions": library_versions(),
             "source": source_fingerprint()},
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
            found = load_model(model_path), json.loads(meta_path.read_text())
        except Exception:  # a damaged entry is a miss, never an error
            return None
        with contextlib.suppress(OSError):
            os.utime(meta_path)  # most recently used: evicted last
        self._in_use.add(key)
        return found

    def put(self, key: str, model: ir.Model, meta: dict) -> str | None:
        """Store a result and evict down to the cap; returns a note when the result is not cached."""
        if not self.enabled or self.max_bytes == 0:
            return None
        size = weight_bytes(model)
        if size > self.max_bytes:
            return (f"not cached: the result ({format_size(size)}) is larger than the cache cap "
                    f"({format_size(self.max_bytes)}; {CACHE_MAX_ENV} sets it)")
        model_path, meta_path = self._paths(key)
        try:
            model_path.parent.mkdir(parents=True, exist_ok=True)
            save_model(model, model_path)
            tmp = meta_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(meta, default=str))
            os.replace(tmp, meta_path)
        except (OSError, InputError):
            return None
        self._in_use.add(key)
        self.evict()
        return None

    def entries(self) -> list[CacheEntry]:
        """Every complete entry, least recently used first."""
        found: list[CacheEntry] = []
        if not self.root.is_dir():
            return found
        for meta_path in self.root.glob("??/*.json"):
            key = meta_path.stem
            model_path = meta_path.with_suffix(".onnx")
            files = tuple(p for p in (meta_path, model_path, model_path.with_name(model_path.name + ".data"))
                          if p.exists())
            with contextlib.suppress(FileNotFoundError):
                found.append(CacheEntry(key, files, sum(p.stat().st_size for p in files), meta_path.stat().st_mtime))
        return sorted(found, key=lambda e: e.last_used)

    def size(self) -> int:
        """Bytes under the cache folder (entries and any leftovers)."""
        if not self.root.is_dir():
            return 0
        total = 0
        for path in self.root.rglob("*"):
            with contextlib.suppress(FileNotFoundError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def evict(self) -> tuple[int, int]:
        """Remove least recently used entries until the cache fits the cap (never one this object
        served or stored); returns (entries, bytes) removed."""
        entries = self.entries()
        total = sum(e.size for e in entries)
        removed = freed = 0
        for entry in entries:
            if total <= self.max_bytes:
                break
            if entry.key in self._in_use:
                continue
            _remove(entry.files)
            total -= entry.size
            removed, freed = removed + 1, freed + entry.size
        return removed, freed

    def clear(self) -> tuple[int, int]:
        """Remove every entry and leftover; returns (entries, bytes) removed."""
        entries, size = len(self.entries()), self.size()
        if self.root.is_dir():
            for folder in self.root.glob("??"):
                if folder.is_dir():
                    shutil.rmtree(folder, ignore_errors=True)
        return entries, size - self.size()


def _remove(files: tuple[Path, ...]) -> None:
    for path in sorted(files, key=lambda p: p.suffix != ".json"):  # the .json first: no half entry is a hit
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
