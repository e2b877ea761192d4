"""Shared fixtures: tiny models built inline, data files, an isolated cache."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


def pytest_collection_modifyitems(config, items):
    """``corpus`` tests (the whole model corpus, minutes) run only when ``-m`` names them."""
    if "corpus" in (config.getoption("-m") or ""):
        return
    skip = pytest.mark.skip(reason="the whole corpus runs with -m corpus (make corpus)")
    for item in items:
        if "corpus" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own pass-result cache so runs never share state, and optimize skips its
    latency rows unless a test asks for them (tests/test_optimize_latency.py): timing is not what
    the other tests check, and it would add seconds to each."""
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("GRAPHOPT_LATENCY_BUDGET", "0")


def conv_bn_model(batch: int | str = "N", opset: int = 17, seed: int = 0) -> onnx.ModelProto:
    """input (N,1,8,8) → Conv(4) → BatchNormalization → Relu → Identity → Flatten → Gemm(10) → logits."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4, 1, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    scale = rng.uniform(0.5, 1.5, 4).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    mean = rng.standard_normal(4).astype(np.float32) * 0.1
    var = rng.uniform(0.5, 2.0, 4).astype(np.float32)
    fc_w = (rng.standard_normal((10, 256)) * 0.1).astype(np.float32)
    fc_b = rng.standard_normal(10).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (w, "w"), (b, "b"), (scale, "bn_scale"), (bias, "bn_bias"), (mean, "bn_mean"), (var, "bn_var"),
        (fc_w, "fc_w"), (fc_b, "fc_b")]]
    nodes = [
        helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"], ["bn"], name="bn"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["r2"], name="identity"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "conv_bn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_data(path, n: int = 24, seed: int = 1, labels: bool = True, **overrides) -> str:
    rng = np.random.default_rng(seed)
    arrays = {"input": rng.random((n, 1, 8, 8), dtype=np.float32)}
    if labels:
        arrays["labels"] = rng.integers(0, 10, n).astype(np.int64)
    arrays.update(overrides)
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "model.onnx"
    onnx.save(conv_bn_model(), str(path))
    return path


@pytest.fixture
def eval_path(tmp_path):
    return save_data(tmp_path / "eval.npz")
