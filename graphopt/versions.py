"""Versions of graphopt and the libraries whose behaviour shapes its results."""

from __future__ import annotations

import functools
import hashlib
from importlib import metadata
from pathlib import Path

LIBRARIES = ("onnx", "onnx-ir", "onnxruntime", "onnxruntime-gpu", "onnxsim", "onnxconverter-common", "numpy")


@functools.cache
def library_versions() -> dict[str, str]:
    versions = {"graphopt": _version("graphopt")}
    for name in LIBRARIES:
        version = _version(name)
        if version != "not installed":
            versions[name] = version
    return versions


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "graphopt":
            from graphopt import __version__

            return __version__
        return "not installed"


@functools.cache
def source_fingerprint() -> str:
    """sha256 of graphopt's own Python sources (the ``graphopt`` package and its passes).

    The version number alone does not change between commits of a git checkout or an editable install, so a
    cache keyed only on it would hand back results an older pass wrote. Hashing the ~150 source files takes
    a few milliseconds, once per process."""
    import graphopt
    import graphopt.passes

    digest = hashlib.sha256()
    roots = [Path(graphopt.__file__).parent, *map(Path, graphopt.passes.__path__)]
    files = sorted({path.resolve() for root in roots for path in root.rglob("*.py")})
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()
