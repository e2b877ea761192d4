"""Unstructured magnitude pruning, N:M (2:4) sparsity with its checker, sparse-initializer storage."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from graphopt.inspection import inspect_model
from graphopt.model_io import load_model, save_model
from graphopt.passes.prune.nm import apply_n_m, check_n_m, parse_pattern, prune_n_m
from graphopt.passes.prune.unstructured import prune_magnitude
from graphopt.sparse_initializers import STORE_SPARSE_KEY, to_sparse
from graphopt.sparsity import SPARSITY_2_4_KEY, follows_n_m, recorded_sparse_weights
from tests.prune_graphs import model, run, weights

X = np.random.default_rng(2).standard_normal((3, 8, 6, 6)).astype(np.float32)


def conv_mlp() -> onnx.ModelProto:
    """Conv(8→16) → Relu → GlobalAveragePool → Flatten → MatMul(16×64) → Gemm(64→48, transB) → Gemm(48→10)."""
    return model([
        helper.make_node("Conv", ["x", "wc"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("MatMul", ["f", "wm"], ["m"]),
        helper.make_node("Gemm", ["m", "wg"], ["g"], transB=1),
        helper.make_node("Gemm", ["g", "wo"], ["y"]),
    ], [("x", ["N", 8, 6, 6])], [("y", ["N", 10])],
        {"wc": weights((16, 8, 3, 3), 1), "wm": weights((16, 64), 2), "wg": weights((48, 64), 3),
         "wo": weights((48, 10), 4)})


def weight(m: ir.Model, name: str) -> np.ndarray:
    return m.graph.initializers[name].const_value.numpy()


def magnitude_mask(array: np.ndarray, count: int) -> np.ndarray:
    order = np.argsort(np.abs(array).reshape(-1), kind="stable")
    mask = np.zeros(array.size, bool)
    mask[order[:count]] = True
    return mask.reshape(array.shape)


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("amount", [0.5, 0.8])
def test_layer_scope_reaches_the_target_exactly_in_every_weight(amount):
    original = ir.from_proto(conv_mlp())
    out = prune_magnitude(original, amount, skip_first_last=False, min_elements=1)
    assert {w.weight for w in out.weights} == {"wc", "wm", "wg", "wo"}
    for name in ("wc", "wm", "wg", "wo"):
        before, after = weight(original, name), weight(out.model, name)
        expected = np.where(magnitude_mask(before, int(round(amount * before.size))), 0, before)
        np.testing.assert_array_equal(after, expected)
        assert (after == 0).sum() == int(round(amount * before.size))
    np.testing.assert_allclose(run(out.model, {"x": X})[0], run(_with(conv_mlp(), out.model), {"x": X})[0])


def _with(proto: onnx.ModelProto, pruned: ir.Model) -> onnx.ModelProto:
    """``proto`` with its weights replaced by the pruned ones (same graph)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for tensor in copy.graph.initializer:
        tensor.CopyFrom(onnx.numpy_helper.from_array(weight(pruned, tensor.name), tensor.name))
    return copy


def test_global_scope_uses_one_threshold():
    original = ir.from_proto(conv_mlp())
    out = prune_magnitude(original, 0.6, scope="global", skip_first_last=False, min_elements=1)
    names = ["wc", "wm", "wg", "wo"]
    before = np.concatenate([weight(original, n).reshape(-1) for n in names])
    after = np.concatenate([weight(out.model, n).reshape(-1) for n in names])
    assert (after == 0).sum() == int(round(0.6 * before.size))
    threshold = np.abs(before[after == 0]).max()
    assert np.abs(before[after != 0]).min() >= threshold
    per_layer = {w.weight: w.sparsity for w in out.weights}
    assert max(per_layer.values()) - min(per_layer.values()) > 0.01  # layers differ, the total is exact


def test_defaults_skip_first_last_and_tiny_weights():
    out = prune_magnitude(ir.from_proto(conv_mlp()), 0.5, min_elements=2000)
    skipped = dict(out.skipped)
    assert "first layer" in skipped["wc"] and "last layer" in skipped["wo"]
    assert "tiny" in skipped["wm"] and {w.weight for w in out.weights} == {"wg"}
    assert prune_magnitude(ir.from_proto(conv_mlp()), 0.0).weights == []


# ---------------------------------------------------------------- N:M


def test_apply_2_4_keeps_the_two_largest_of_every_four():
    array = weights((6, 16, 3, 3), 7)
    pruned = apply_n_m(array, 1, 2, 4)
    groups = np.moveaxis(array, 1, -1).reshape(-1, 4)
    kept = np.moveaxis(pruned, 1, -1).reshape(-1, 4)
    assert (np.count_nonzero(kept, axis=1) == 2).all()
    top2 = np.sort(np.argsort(-np.abs(groups), axis=1)[:, :2], axis=1)
    assert (np.sort(np.argwhere(kept != 0)[:, 1].reshape(-1, 2), axis=1) == top2).all()
    assert follows_n_m(pruned, 1) and not follows_n_m(pruned, 0)


def test_checker_rejects_dense_groups_and_ragged_axes():
    ok = np.array([[1, 0, 2, 0, 0, 0, 3, 4]], np.float32)
    assert follows_n_m(ok, 1, 2, 4)
    assert not follows_n_m(np.array([[1, 2, 3, 0, 0, 0, 0, 0]], np.float32), 1, 2, 4)
    assert not follows_n_m(np.zeros((2, 6), np.float32), 1, 2, 4)
    assert follows_n_m(np.array([[1, 0, 0, 0, 0, 0, 0, 5]], np.float32), 1, 1, 4)
    with pytest.raises(Exception, match="0 < N < M"):
        parse_pattern("4:2")


def test_prune_2_4_follows_the_reduction_axis_and_records_the_weights():
    out = prune_n_m(ir.from_proto(conv_mlp()), skip_first_last=False, min_elements=1)
    pruned = {w.weight for w in out.weights}
    assert pruned == {"wc", "wm", "wg", "wo"}
    assert follows_n_m(weight(out.model, "wc"), 1)   # Conv: input channels
    assert follows_n_m(weight(out.model, "wm"), 0)   # MatMul B: rows (K)
    assert follows_n_m(weight(out.model, "wg"), 1)   # Gemm transB=1: columns (K)
    assert json.loads(out.model.metadata_props[SPARSITY_2_4_KEY]) == sorted(pruned)
    assert recorded_sparse_weights(out.model) == sorted(pruned)
    assert check_n_m(out.model, pruned) == [] and check_n_m(ir.from_proto(conv_mlp()), ["wm"]) == ["wm"]
    info = inspect_model(out.model)
    assert set(info["sparsity"]["weights_2_4"]) == pruned


def test_2_4_leaves_a_ragged_reduction_axis_dense():
    proto = model([helper.make_node("Conv", ["x", "w"], ["y"])], [("x", ["N", 3, 6, 6])], [("y", ["N", 8, 4, 4])],
                  {"w": weights((8, 3, 3, 3), 1)})
    out = prune_n_m(ir.from_proto(proto), skip_first_last=False, min_elements=1)
    assert out.weights == [] and "not a multiple of 4" in dict(out.skipped)["w"]
    assert SPARSITY_2_4_KEY not in out.model.metadata_props


# ---------------------------------------------------------------- sparse initializers


def test_sparse_initializers_load_in_onnxruntime_with_the_same_outputs(tmp_path):
    out = prune_magnitude(ir.from_proto(conv_mlp()), 0.8, skip_first_last=False, min_elements=1)
    dense_path, sparse_path = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    save_model(out.model, dense_path)
    out.model.metadata_props[STORE_SPARSE_KEY] = json.dumps(["wc", "wm", "wg", "wo"])
    save_model(out.model, sparse_path)
    stored = onnx.load(str(sparse_path))
    assert sorted(s.values.name for s in stored.graph.sparse_initializer) == ["wc", "wg", "wm", "wo"]
    assert not [t for t in stored.graph.initializer if t.name in ("wc", "wm")]
    onnx.checker.check_model(stored)
    np.testing.assert_array_equal(run(stored, {"x": X})[0], run(onnx.load(str(dense_path)), {"x": X})[0])
    assert sparse_path.stat().st_size < 0.75 * dense_path.stat().st_size
    reloaded = load_model(sparse_path)  # graphopt reads them back as dense weights
    np.testing.assert_array_equal(weight(reloaded, "wg"), weight(out.model, "wg"))


def test_sparse_storage_keeps_weights_dense_when_that_is_smaller():
    proto = ir.to_proto(prune_magnitude(ir.from_proto(conv_mlp()), 0.5, skip_first_last=False, min_elements=1).model)
    report = to_sparse(proto, ["wc", "wm"])
    assert report.stored == [] and sorted(report.kept_dense) == ["wc", "wm"]
    assert not proto.graph.sparse_initializer
