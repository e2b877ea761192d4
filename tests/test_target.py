"""Target selection: explicit kinds, probing, providers."""

from __future__ import annotations

import pytest

from graphopt import target as target_mod
from graphopt.errors import InputError
from graphopt.target import Target, make_target


def test_explicit_targets_and_providers():
    assert make_target("cpu").providers == ["CPUExecutionProvider"]
    assert make_target("trt").providers[0] == "TensorrtExecutionProvider"
    with pytest.raises(InputError, match="unknown target"):
        Target("tpu")  # type: ignore[arg-type]


def test_detection_is_probed_not_assumed(monkeypatch):
    """A listed-but-unloadable provider must not make the target cuda/trt."""
    target_mod.detect_target.cache_clear()
    monkeypatch.setattr(target_mod, "cuda_gpus", lambda: [target_mod.GpuInfo("Fake GPU", (9, 0))])
    monkeypatch.setattr(target_mod, "ort_provider_loads", lambda provider: provider == "CUDAExecutionProvider")
    monkeypatch.setattr(target_mod.importlib.util, "find_spec", lambda name: None)
    try:
        detected = target_mod.detect_target()
        assert detected.kind == "cuda" and detected.auto_detected and detected.gpu.name == "Fake GPU"
    finally:
        target_mod.detect_target.cache_clear()


def test_no_gpu_means_cpu(monkeypatch):
    target_mod.detect_target.cache_clear()
    monkeypatch.setattr(target_mod, "cuda_gpus", lambda: [])
    try:
        assert target_mod.detect_target().kind == "cpu"
    finally:
        target_mod.detect_target.cache_clear()


def test_listed_providers_are_verified_by_loading():
    # onnxruntime-gpu lists CUDA even without a GPU; providers_that_load must report what really loaded.
    from graphopt.engines.ort import providers_that_load

    loaded = providers_that_load(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "CPUExecutionProvider" in loaded
    if not target_mod.cuda_gpus():
        assert "CUDAExecutionProvider" not in loaded
