"""Channel pruning, one inline graph per coupling kind.

Each test makes the channels it expects to lose weak in every layer of their group, prunes, and
compares onnxruntime on the pruned model with numpy on the original weights minus those channels.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import helper

from graphopt.errors import InputError
from graphopt.passes.prune.channel import prune_channels
from tests.prune_graphs import (
    batch_norm,
    conv2d,
    drop,
    layer_norm,
    model,
    relu,
    run,
    sigmoid,
    weaken,
    weights,
)

X = np.random.default_rng(7).standard_normal((2, 3, 6, 6)).astype(np.float32)


def prune(proto: onnx.ModelProto, amount: float, **kwargs):
    kwargs.setdefault("skip_first_last", False)
    return prune_channels(ir.from_proto(proto), amount, **kwargs)


def init_shape(pruned: ir.Model, original_name: str) -> tuple[int, ...]:
    """Shape of the initializer a node now reads in place of ``original_name``."""
    for node in pruned.graph:
        for value in node.inputs:
            if value is not None and value.const_value is not None and value.name.split("_pruned")[0] == original_name:
                return tuple(value.const_value.shape.dims)
    raise AssertionError(f"no initializer derived from {original_name}")


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- BN, residual Add


@pytest.mark.parametrize("drop_ch", [[1, 4], [0, 5, 6]])
def test_conv_bn_relu_conv(drop_ch):
    c = 8
    w1 = weaken(weights((c, 3, 3, 3), 1), 0, drop_ch)
    b1 = weights(c, 2)
    scale, bias = weights(c, 3) + 1, weights(c, 4)
    mean, var = weights(c, 5), np.abs(weights(c, 6)) + 0.5
    w2 = weaken(weights((4, c, 1, 1), 7), 1, drop_ch)
    proto = model([
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"]),
        helper.make_node("Relu", ["bn"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
        {"w1": w1, "b1": b1, "s": scale, "bb": bias, "m": mean, "v": var, "w2": w2})
    out = prune(proto, len(drop_ch) / c)
    d = drop_ch
    want = conv2d(relu(batch_norm(conv2d(X, drop(w1, 0, d), drop(b1, 0, d), pad=1), drop(scale, 0, d),
                                  drop(bias, 0, d), drop(mean, 0, d), drop(var, 0, d))), drop(w2, 1, d))
    close(run(out.model, {"x": X})[0], want)
    assert init_shape(out.model, "w1")[0] == c - len(d) and init_shape(out.model, "w2")[1] == c - len(d)
    assert [(g.channels_before, g.channels_after) for g in out.groups] == [(c, c - len(d))]
    assert out.exact_check == "passed"


def test_residual_add_prunes_both_branches_together():
    c, d = 8, [2, 3]
    w1 = weaken(weights((c, 3, 3, 3), 1), 0, d)
    w2 = weaken(weaken(weights((c, c, 3, 3), 2), 0, d), 1, d)
    w3 = weaken(weights((5, c, 1, 1), 3), 1, d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Conv", ["ra", "w2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["ra", "b"], ["s"]),
        helper.make_node("Conv", ["s", "w3"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 6, 6])], {"w1": w1, "w2": w2, "w3": w3})
    out = prune(proto, 0.25)
    ra = relu(conv2d(X, drop(w1, 0, d), pad=1))
    s = ra + conv2d(ra, drop(drop(w2, 0, d), 1, d), pad=1)
    close(run(out.model, {"x": X})[0], conv2d(s, drop(w3, 1, d)))
    assert len(out.groups) == 1 and set(out.groups[0].members) >= {"Conv_1", "Conv_2", "Conv_3"}


# ---------------------------------------------------------------- grouped / depthwise


def test_grouped_conv_keeps_the_same_positions_in_every_group():
    c, group = 8, 2  # 4 channels per group; position 1 of each group is weak
    d = [1, 5]
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    wg = weaken(weaken(weights((c, c // group, 3, 3), 2), 1, [1]), 0, d)
    w3 = weaken(weights((4, c, 1, 1), 3), 1, d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["a", "wg"], ["b"], pads=[1, 1, 1, 1], group=group),
        helper.make_node("Conv", ["b", "w3"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], {"w1": w1, "wg": wg, "w3": w3})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d))
    b = conv2d(a, drop(drop(wg, 0, d), 1, [1]), pad=1, group=group)
    close(run(out.model, {"x": X})[0], conv2d(b, drop(w3, 1, d)))
    grouped = next(n for n in out.model.graph if n.name == "Conv_2")
    assert grouped.attributes["group"].as_int() == group


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_passes_channels_and_shrinks_group(multiplier):
    c, d = 6, [0, 4]
    out_d = [ch * multiplier + k for ch in d for k in range(multiplier)]
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    wd = weaken(weights((c * multiplier, 1, 3, 3), 2), 0, out_d)
    bd = weights(c * multiplier, 4)
    w3 = weaken(weights((4, c * multiplier, 1, 1), 3), 1, out_d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Conv", ["a", "wd", "bd"], ["b"], pads=[1, 1, 1, 1], group=c),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "w3"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], {"w1": w1, "wd": wd, "bd": bd, "w3": w3})
    out = prune(proto, len(d) / c)
    a = conv2d(X, drop(w1, 0, d))
    b = relu(conv2d(a, drop(wd, 0, out_d), drop(bd, 0, out_d), pad=1, group=c - len(d)))
    close(run(out.model, {"x": X})[0], conv2d(b, drop(w3, 1, out_d)))
    depthwise = next(n for n in out.model.graph if n.name == "Conv_2")
    assert depthwise.attributes["group"].as_int() == c - len(d)


# ---------------------------------------------------------------- Concat, Split, Slice


def test_concat_offsets_the_second_input():
    ca, cb = 6, 4
    da, db = [1], [2]
    wa = weaken(weights((ca, 3, 1, 1), 1), 0, da)
    wb = weaken(weights((cb, 3, 1, 1), 2), 0, db)
    w3 = weaken(weaken(weights((5, ca + cb, 1, 1), 3), 1, da), 1, [ca + i for i in db])
    proto = model([
        helper.make_node("Conv", ["x", "wa"], ["a"]),
        helper.make_node("Conv", ["x", "wb"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("Conv", ["cat", "w3"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 5, 6, 6])], {"wa": wa, "wb": wb, "w3": w3})
    out = prune(proto, 0.25)  # floor(0.25·6) = 1 of a, floor(0.25·4) = 1 of b
    cat = np.concatenate([conv2d(X, drop(wa, 0, da)), conv2d(X, drop(wb, 0, db))], axis=1)
    close(run(out.model, {"x": X})[0], conv2d(cat, drop(w3, 1, da + [ca + i for i in db])))
    assert sorted((g.channels_before, g.channels_after) for g in out.groups) == [(4, 3), (6, 5)]


def test_split_sizes_are_rewritten():
    c, d = 8, [1, 6]  # one weak channel in each half
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    wp = weaken(weights((3, 4, 1, 1), 2), 1, [1])
    wq = weaken(weights((3, 4, 1, 1), 3), 1, [2])
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Split", ["a", "sizes"], ["h1", "h2"], axis=1),
        helper.make_node("Conv", ["h1", "wp"], ["p"]),
        helper.make_node("Conv", ["h2", "wq"], ["q"]),
        helper.make_node("Add", ["p", "q"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 3, 6, 6])],
        {"w1": w1, "wp": wp, "wq": wq, "sizes": np.array([4, 4], dtype=np.int64)})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d))
    want = conv2d(a[:, :3], drop(wp, 1, [1])) + conv2d(a[:, 3:], drop(wq, 1, [2]))
    close(run(out.model, {"x": X})[0], want)


def test_slice_along_channels_rewrites_starts_and_ends():
    c, d = 8, [0, 5]
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    w2 = weaken(weights((3, 4, 1, 1), 2), 1, [1])  # reads channels 4..7: channel 5 is its position 1
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Slice", ["a", "starts", "ends", "axes"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 3, 6, 6])],
        {"w1": w1, "w2": w2, "starts": np.array([4], np.int64), "ends": np.array([100], np.int64),
         "axes": np.array([1], np.int64)})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d))  # kept: 1,2,3,4,6,7 → slice from new index 3 (channel 4)
    close(run(out.model, {"x": X})[0], conv2d(a[:, 3:], drop(w2, 1, [1])))


# ---------------------------------------------------------------- SE, Flatten → Gemm, Resize


def test_squeeze_excitation_block():
    c, r = 8, 4
    d, dr = [3, 7], [0]
    w1 = weaken(weights((c, 3, 3, 3), 1), 0, d)
    wr = weaken(weaken(weights((r, c, 1, 1), 2), 1, d), 0, dr)
    br = weights(r, 3)
    we = weaken(weaken(weights((c, r, 1, 1), 4), 0, d), 1, dr)
    be = weights(c, 5)
    w2 = weaken(weights((4, c, 1, 1), 6), 1, d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Conv", ["p", "wr", "br"], ["sq"]),
        helper.make_node("Relu", ["sq"], ["rs"]),
        helper.make_node("Conv", ["rs", "we", "be"], ["ex"]),
        helper.make_node("Sigmoid", ["ex"], ["gate"]),
        helper.make_node("Mul", ["a", "gate"], ["scaled"]),
        helper.make_node("Conv", ["scaled", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
        {"w1": w1, "wr": wr, "br": br, "we": we, "be": be, "w2": w2})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d), pad=1)
    p = a.mean(axis=(2, 3), keepdims=True)
    rs = relu(conv2d(p, drop(drop(wr, 1, d), 0, dr), drop(br, 0, dr)))
    gate = sigmoid(conv2d(rs, drop(drop(we, 0, d), 1, dr), drop(be, 0, d)))
    close(run(out.model, {"x": X})[0], conv2d(a * gate, drop(w2, 1, d)))
    assert sorted((g.channels_before, g.channels_after) for g in out.groups) == [(4, 3), (8, 6)]


@pytest.mark.parametrize("style", ["flatten", "pytorch-view"])
def test_flatten_or_view_before_gemm(style):
    c, d = 4, [2]
    w1 = weaken(weights((c, 3, 3, 3), 1), 0, d)
    hw = 4 * 4
    fc = weights((10, c * hw), 2, 0.1)
    fc = weaken(fc, 1, range(2 * hw, 3 * hw))
    if style == "flatten":
        reshape = [helper.make_node("Flatten", ["a"], ["f"], axis=1)]
        extra = {}
    else:  # x.view(x.size(0), -1) as PyTorch writes it
        reshape = [helper.make_node("Shape", ["a"], ["shape"]),
                   helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                   helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
                   helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
                   helper.make_node("Reshape", ["a", "target"], ["f"])]
        extra = {"zero": np.array(0, np.int64), "axes0": np.array([0], np.int64),
                 "minus_one": np.array([-1], np.int64)}
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]), *reshape,
                   helper.make_node("Gemm", ["f", "fc", "fcb"], ["y"], transB=1)],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 10])], {"w1": w1, "fc": fc, "fcb": weights(10, 3), **extra})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d)).reshape(2, -1)
    want = a @ drop(fc, 1, range(2 * hw, 3 * hw)).T + weights(10, 3)
    close(run(out.model, {"x": X})[0], want)
    assert init_shape(out.model, "fc") == (10, (c - 1) * hw)


def test_reshape_with_literal_channel_count_is_rewritten():
    """Reshape(a, [0, 4, 36]) names the channel count: after pruning one channel it must say 3."""
    c, d = 4, [1]
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    wm = weaken(weights((c, 5), 2), 0, d)
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]),
                   helper.make_node("Reshape", ["a", "target"], ["r"]),
                   helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1]),
                   helper.make_node("MatMul", ["t", "wm"], ["y"])],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 36, 5])],
                  {"w1": w1, "wm": wm, "target": np.array([0, c, 36], np.int64)})
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d)).reshape(2, c - 1, 36).transpose(0, 2, 1)
    close(run(out.model, {"x": X})[0], a @ drop(wm, 0, d))
    target = next(n for n in out.model.graph if n.op_type == "Reshape").inputs[1]
    assert target.const_value.numpy().tolist() == [0, c - 1, 36]


def test_channel_count_read_by_an_unmodelled_op_is_not_pruned():
    """ConstantOfShape(Shape(a)) builds a tensor from the channel count: those channels stay."""
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]),
                   helper.make_node("Shape", ["a"], ["shape"]),
                   helper.make_node("ConstantOfShape", ["shape"], ["zeros"],
                                    value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [1.0])),
                   helper.make_node("Add", ["a", "zeros"], ["s"]),
                   helper.make_node("Conv", ["s", "w2"], ["y"])],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 2, 6, 6])],
                  {"w1": weights((8, 3, 1, 1), 1), "w2": weights((2, 8, 1, 1), 2)})
    out = prune(proto, 0.5)
    assert out.groups == [] and any("ConstantOfShape" in s.reason for s in out.skipped)
    close(run(out.model, {"x": X})[0], run(proto, {"x": X})[0])


def test_channel_count_mixed_with_the_batch_dim_is_not_pruned():
    """Reshape(a, [N·C, -1]): the target multiplies a dynamic dim by the channel count."""
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]),
                   helper.make_node("Shape", ["a"], ["shape"]),
                   helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
                   helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
                   helper.make_node("Mul", ["n", "c"], ["nc"]),
                   helper.make_node("Unsqueeze", ["nc", "axes0"], ["nc1"]),
                   helper.make_node("Concat", ["nc1", "minus_one"], ["target"], axis=0),
                   helper.make_node("Reshape", ["a", "target"], ["r"]),
                   helper.make_node("ReduceMax", ["r"], ["y"], axes=[1], keepdims=0)],
                  [("x", ["N", 3, 6, 6])], [("y", ["M"])],
                  {"w1": weights((8, 3, 1, 1), 1), "zero": np.array(0, np.int64), "one": np.array(1, np.int64),
                   "axes0": np.array([0], np.int64), "minus_one": np.array([-1], np.int64)})
    out = prune(proto, 0.5)
    assert out.groups == [] and any("dynamic dims" in s.reason for s in out.skipped)


def test_resize_and_maxpool_pass_channels():
    c, d = 6, [4]
    w1 = weaken(weights((c, 3, 3, 3), 1), 0, d)
    w2 = weaken(weights((2, c, 1, 1), 2), 1, d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["p", "", "scales"], ["u"], mode="nearest"),
        helper.make_node("Conv", ["u", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 2, 4, 4])],
        {"w1": w1, "w2": w2, "scales": np.array([1, 1, 2, 2], np.float32)})
    out = prune(proto, 1 / c)
    a = conv2d(X, drop(w1, 0, d))
    p = a.reshape(2, c - 1, 2, 2, 2, 2).max(axis=(3, 5))
    u = p.repeat(2, axis=2).repeat(2, axis=3)
    close(run(out.model, {"x": X})[0], conv2d(u, drop(w2, 1, d)))


# ---------------------------------------------------------------- transformer patterns


def test_channels_last_layer_norm_then_matmul():
    c, d = 8, [2, 5]
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    gamma, beta = weights(c, 2) + 1, weights(c, 3)
    wm = weaken(weights((c, 6), 4), 0, d)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "wm"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 6, 6, 6])], {"w1": w1, "gamma": gamma, "beta": beta, "wm": wm})
    out = prune(proto, 0.25)
    t = conv2d(X, drop(w1, 0, d)).transpose(0, 2, 3, 1)
    want = layer_norm(t, drop(gamma, 0, d), drop(beta, 0, d)) @ drop(wm, 0, d)
    close(run(out.model, {"x": X})[0], want)
    assert out.groups[0].approximate and out.exact_check.startswith("skipped")


def test_mlp_hidden_dimension():
    dm, hidden, d = 6, 10, [0, 3, 8]
    xs = np.random.default_rng(3).standard_normal((2, 5, dm)).astype(np.float32)
    w1 = weaken(weights((dm, hidden), 1), 1, d)
    b1 = weights(hidden, 2)
    w2 = weaken(weights((hidden, dm), 3), 0, d)
    proto = model([
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["a"]),
        helper.make_node("MatMul", ["a", "w2"], ["y"]),
    ], [("x", ["N", "S", dm])], [("y", ["N", "S", dm])], {"w1": w1, "b1": b1, "w2": w2})
    out = prune(proto, 0.3)
    want = relu(xs @ drop(w1, 1, d) + drop(b1, 0, d)) @ drop(w2, 0, d)
    close(run(out.model, {"x": xs})[0], want)
    assert out.groups[0].channels_after == hidden - len(d) and out.exact_check == "passed"


def test_attention_head_dims_are_pruned_uniformly():
    """q, k = x·Wq, x·Wk reshaped to 2 heads of 4; scores = q·kᵀ; the same head-dim positions go."""
    dm, heads, hd = 6, 2, 4
    drop_pos = [1]
    cols = [h * hd + p for h in range(heads) for p in drop_pos]
    xs = np.random.default_rng(5).standard_normal((2, 3, dm)).astype(np.float32)
    wq, wk = weaken(weights((dm, heads * hd), 1), 1, cols), weaken(weights((dm, heads * hd), 2), 1, cols)
    proto = model([
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("Reshape", ["q", "heads_shape"], ["qh"]),
        helper.make_node("Reshape", ["k", "heads_shape"], ["kh"]),
        helper.make_node("Transpose", ["qh"], ["qt"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["kh"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["qt", "kt"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["y"], axis=-1),
    ], [("x", ["N", 3, dm])], [("y", ["N", heads, 3, 3])],
        {"wq": wq, "wk": wk, "heads_shape": np.array([0, 0, heads, hd], np.int64)})
    out = prune(proto, 0.25)
    q = (xs @ drop(wq, 1, cols)).reshape(2, 3, heads, hd - 1).transpose(0, 2, 1, 3)
    k = (xs @ drop(wk, 1, cols)).reshape(2, 3, heads, hd - 1).transpose(0, 2, 3, 1)
    s = q @ k
    e = np.exp(s - s.max(-1, keepdims=True))
    close(run(out.model, {"x": xs})[0], e / e.sum(-1, keepdims=True))
    assert init_shape(out.model, "heads_shape") == (4,)


@pytest.mark.parametrize("targets", ["literal", "computed"])
def test_channel_shuffle_keeps_the_same_positions_in_every_group(targets):
    """x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w), with the targets as constants or
    computed from Shape the way PyTorch exports them (c // g through Div)."""
    c, groups = 8, 2
    d = [1, 5]  # position 1 of both groups
    w1 = weaken(weights((c, 3, 1, 1), 1), 0, d)
    shuffled = [g * (c // groups) + j for j in range(c // groups) for g in range(groups)]  # new[i] = old[shuffled[i]]
    w2 = weaken(weights((3, c, 1, 1), 2), 1, [shuffled.index(ch) for ch in d])
    consts = {"w1": w1, "w2": w2}
    if targets == "literal":
        shapes = []
        consts.update(split_shape=np.array([0, groups, c // groups, 6, 6], np.int64),
                      merge_shape=np.array([0, c, 6, 6], np.int64))
    else:
        shapes = [helper.make_node("Shape", ["a"], ["sh"]),
                  helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
                  helper.make_node("Gather", ["sh", "i1"], ["ch"], axis=0),
                  helper.make_node("Div", ["ch", "g"], ["per"]),
                  helper.make_node("Unsqueeze", ["n", "ax0"], ["n1"]),
                  helper.make_node("Unsqueeze", ["per", "ax0"], ["per1"]),
                  helper.make_node("Unsqueeze", ["ch", "ax0"], ["ch1"]),
                  helper.make_node("Concat", ["n1", "g1", "per1", "hw"], ["split_shape"], axis=0),
                  helper.make_node("Concat", ["n1", "ch1", "hw"], ["merge_shape"], axis=0)]
        consts.update(i0=np.array(0, np.int64), i1=np.array(1, np.int64), g=np.array(groups, np.int64),
                      ax0=np.array([0], np.int64), g1=np.array([groups], np.int64), hw=np.array([6, 6], np.int64))
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]), *shapes,
        helper.make_node("Reshape", ["a", "split_shape"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge_shape"], ["s"]),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 3, 6, 6])], consts)
    out = prune(proto, 0.25)
    a = conv2d(X, drop(w1, 0, d))
    kept = c - len(d)
    s = a.reshape(2, groups, kept // groups, 6, 6).transpose(0, 2, 1, 3, 4).reshape(2, kept, 6, 6)
    close(run(out.model, {"x": X})[0], conv2d(s, drop(w2, 1, [shuffled.index(ch) for ch in d])))


# ---------------------------------------------------------------- refusals, defaults


def test_unmodelled_coupling_is_left_alone_and_reported():
    """Softmax across channels and a custom op: those channels are kept, the model is unchanged."""
    w1, w2 = weights((6, 3, 1, 1), 1), weights((4, 6, 1, 1), 2)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Softmax", ["a"], ["s"], axis=1),
        helper.make_node("Conv", ["s", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])], {"w1": w1, "w2": w2})
    out = prune(proto, 0.5)
    assert out.groups == []
    assert any("Softmax" in s.reason and s.channels == 6 for s in out.skipped)
    close(run(out.model, {"x": X})[0], run(proto, {"x": X})[0])


def test_einsum_reader_is_not_pruned():
    w1 = weights((6, 3, 1, 1), 1)
    proto = model([
        helper.make_node("Conv", ["x", "w1"], ["a"]),
        helper.make_node("Einsum", ["a", "e"], ["y"], equation="nchw,co->nohw"),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 2, 6, 6])], {"w1": w1, "e": weights((6, 2), 3)})
    out = prune(proto, 0.5)
    assert out.groups == [] and any("Einsum" in s.reason for s in out.skipped)


def test_prune_zero_is_identity():
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
                  {"w1": weights((6, 3, 1, 1), 1), "w2": weights((4, 6, 1, 1), 2)})
    original = ir.from_proto(proto)
    out = prune_channels(original, 0.0, skip_first_last=False)
    assert out.groups == [] and out.model is not original
    assert ir.to_proto(out.model).SerializeToString() == ir.to_proto(original).SerializeToString()


def test_first_and_last_layers_are_skipped_by_default():
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
                   helper.make_node("Conv", ["r", "w2"], ["b"]), helper.make_node("Conv", ["b", "w3"], ["y"])],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
                  {"w1": weights((8, 3, 1, 1), 1), "w2": weights((8, 8, 1, 1), 2), "w3": weights((4, 8, 1, 1), 3)})
    out = prune_channels(ir.from_proto(proto), 0.5)
    assert [g.members for g in out.groups] == [("Conv_2", "Conv_3")]
    assert any("first layer" in s.reason for s in out.skipped)
    out = prune_channels(ir.from_proto(proto), 0.5, skip=["w2"], skip_first_last=False)
    assert [g.members for g in out.groups] == [("Conv_1", "Conv_2")]
    with pytest.raises(InputError, match="no node or weight named 'nope'"):
        prune_channels(ir.from_proto(proto), 0.5, skip=["nope"])


def test_input_model_is_untouched_and_amount_is_checked():
    proto = model([helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Conv", ["a", "w2"], ["y"])],
                  [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 6, 6])],
                  {"w1": weights((8, 3, 1, 1), 1), "w2": weights((4, 8, 1, 1), 2)})
    original = ir.from_proto(proto)
    before = ir.to_proto(original).SerializeToString()
    out = prune_channels(original, 0.5, skip_first_last=False)
    assert out.groups and ir.to_proto(original).SerializeToString() == before
    with pytest.raises(InputError, match=r"\[0, 1\)"):
        prune_channels(original, 1.0)


def test_unfolded_batch_norm_scores_like_the_folded_conv():
    """Importance sees γ/σ of an unfolded BN: the channel BN shrinks goes, as it would once folded."""
    c = 8
    w1 = weights((c, 3, 3, 3), 1)
    scale = np.ones(c, np.float32)
    scale[5] = 1e-3  # channel 5's filter is as large as the others, but BN scales it to almost nothing
    bn = {"s": scale, "bb": np.zeros(c, np.float32), "m": np.zeros(c, np.float32), "v": np.ones(c, np.float32)}
    w2 = weights((4, c, 1, 1), 2)
    unfolded = model([
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["bn"]),
        helper.make_node("Conv", ["bn", "w2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 4, 4])], {"w1": w1, **bn, "w2": w2})
    factor = (scale / np.sqrt(1 + 1e-5)).astype(np.float32)
    folded = model([helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]), helper.make_node("Conv", ["c1", "w2"], ["y"])],
                   [("x", ["N", 3, 6, 6])], [("y", ["N", 4, 4, 4])],
                   {"w1": w1 * factor[:, None, None, None], "b1": np.zeros(c, np.float32), "w2": w2})
    for proto in (unfolded, folded):
        out = prune(proto, 1 / c)
        kept = init_shape(out.model, "w2")
        assert kept == (4, c - 1, 1, 1)
        w2_pruned = next(v.const_value.numpy() for n in out.model.graph for v in n.inputs
                         if v is not None and v.name.startswith("w2_pruned"))
        np.testing.assert_array_equal(w2_pruned, np.delete(w2, 5, axis=1))


@pytest.mark.parametrize("total, prunable, amount, round_to, positions, expected", [
    (64, 64, 0.3, 1, 1, 19), (64, 64, 0.3, 8, 1, 16), (64, 64, 0.5, 8, 1, 32), (60, 60, 0.3, 8, 1, 18),
    (512, 512, 0.3, 8, 1, 152), (128, 128, 0.3, 8, 1, 40),
    (32, 32, 0.7, 8, 1, 24),    # kept 10 → 8 (nearest), not 16
    (16, 16, 0.3, 8, 1, 4),     # rounding would keep all 16: pruned unrounded instead
    (64, 40, 0.3, 8, 1, 8),     # only 40 of 64 prunable: 12 removed → kept 52, tie → keep 56
    (8, 8, 0.3, 8, 32, 2),      # 32 conv groups of 8 kept alike: any kept count gives a multiple of 8
    (64, 64, 0.3, 8, 6, 20),    # 6 heads of 64: kept 44 × 6 = 264 = 8 · 33 (45 × 6 would not be)
])
def test_removal_count_rounds_the_kept_width(total, prunable, amount, round_to, positions, expected):
    from graphopt.passes.prune.channel import removal_count

    assert removal_count(total, prunable, amount, round_to, positions) == expected


def test_folded_and_unfolded_models_lose_the_same_channels():
    """BN after the *reader* scales the rows of the slices it reads: folded or not, the same channel goes."""
    c = 8
    w1, w2 = weights((c, 3, 3, 3), 11), weights((6, c, 1, 1), 12)
    gamma2 = np.array([8, 0.1, 0.1, 0.1, 0.1, 0.1], np.float32)  # row 0 of conv2 dominates once scaled
    w2[0] *= 0.05
    w2[0, 2] = 3.0  # channel 2 matters through row 0 only
    bn2 = {"s2": gamma2, "bb2": np.zeros(6, np.float32), "m2": np.zeros(6, np.float32), "v2": np.ones(6, np.float32)}
    unfolded = model([
        helper.make_node("Conv", ["x", "w1"], ["c1"]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"]),
        helper.make_node("BatchNormalization", ["c2", "s2", "bb2", "m2", "v2"], ["y"]),
    ], [("x", ["N", 3, 6, 6])], [("y", ["N", 6, 4, 4])], {"w1": w1, "w2": w2, **bn2})
    factor = (gamma2 / np.sqrt(1 + 1e-5)).astype(np.float32)
    folded = model([helper.make_node("Conv", ["x", "w1"], ["c1"]),
                    helper.make_node("Conv", ["c1", "w2f", "b2f"], ["y"])],
                   [("x", ["N", 3, 6, 6])], [("y", ["N", 6, 4, 4])],
                   {"w1": w1, "w2f": w2 * factor[:, None, None, None], "b2f": np.zeros(6, np.float32)})
    outputs = [run(prune(proto, 0.5).model, {"x": X})[0] for proto in (unfolded, folded)]
    close(outputs[0], outputs[1])
