"""graphopt's reference models: a registry of real and synthetic ONNX models with calibration / eval data.

``import models`` is instant (no torch, no onnx); builders import what they need when called.
Build from the command line with ``python -m models --list | --all | --name NAME``.
"""

from models.registry import (
    BUILD_DIR,
    CHECKS,
    MODELS_DIR,
    REFERENCE_MODELS,
    ZOO_MODELS,
    ReferenceModel,
    build_model,
    get_model,
)

__all__ = [
    "BUILD_DIR",
    "CHECKS",
    "MODELS_DIR",
    "REFERENCE_MODELS",
    "ZOO_MODELS",
    "ReferenceModel",
    "build_model",
    "get_model",
]
