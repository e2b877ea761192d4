"""Versions of graphopt and the libraries whose behaviour shapes its results."""

from __future__ import annotations

import functools
from importlib import metadata

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
