"""int8 methods for transformer encoders (issue 12): SmoothQuant, the outlier-channel split, float attention MatMuls."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.methods.attention_float import activation_matmuls
from graphopt.passes.int8.methods.outlier_split import outlier_channels
from graphopt.passes.int8.methods.smoothquant import smoothquant
from graphopt.passes.int8.scheme import quantizable_nodes, scheme_for
from graphopt.target import Target
from graphopt.verify import mean_cosine

RNG = np.random.default_rng(12)
NO_VNNI = Target("cpu", cpu_vnni=False)
D, FF = 16, 64


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def ln_ffn_model():
    """x → LayerNorm → Q/K MatMuls (shared input) … and LayerNorm → MatMul → GELU(·0.5) → Reshape → MatMul.

    ``ln1`` feeds only the two weighted MatMuls (SmoothQuant folds into its scale and bias); the FFN's
    second MatMul reads a Reshape of GELU's final ``Mul(·, 0.5)`` (folds into the 0.5 through the Reshape).
    The LayerNorm scale puts channel 3 at 40× the rest: a systematic outlier channel."""
    gamma = np.ones(D, np.float32)
    gamma[3] = 40.0
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g1", "b1"], ["ln1"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["ln1", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["ln1", "wk"], ["k"], name="mm_k"),
        helper.make_node("Add", ["q", "k"], ["qk"], name="sum_qk"),
        helper.make_node("LayerNormalization", ["qk", "g2", "b2"], ["ln2"], name="ln2", axis=-1),
        helper.make_node("MatMul", ["ln2", "w1"], ["h"], name="ffn1"),
        helper.make_node("Div", ["h", "sqrt2"], ["hd"], name="gelu_div"),
        helper.make_node("Erf", ["hd"], ["he"], name="gelu_erf"),
        helper.make_node("Add", ["he", "one"], ["hp"], name="gelu_add"),
        helper.make_node("Mul", ["h", "hp"], ["hm"], name="gelu_mul"),
        helper.make_node("Mul", ["hm", "half"], ["gelu"], name="gelu_half"),
        helper.make_node("Reshape", ["gelu", "flat"], ["g2d"], name="to_2d"),
        helper.make_node("MatMul", ["g2d", "w2"], ["y"], name="ffn2"),
    ]
    inits = [_init("g1", gamma), _init("b1", RNG.standard_normal(D) * 0.1),
             _init("wq", RNG.standard_normal((D, D)) * 0.3), _init("wk", RNG.standard_normal((D, D)) * 0.3),
             _init("g2", np.ones(D)), _init("b2", np.zeros(D)),
             _init("w1", RNG.standard_normal((D, FF)) * 0.5), _init("w2", RNG.standard_normal((FF, D)) * 0.2),
             _init("sqrt2", np.sqrt(2.0)), _init("one", 1.0), _init("half", 0.5),
             numpy_helper.from_array(np.array([-1, FF], np.int64), "flat")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, D])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", D])], inits)


def _data(n=64):
    return DataSet({"x": RNG.standard_normal((n, 4, D)).astype(np.float32)})


def test_smoothquant_leaves_fp32_outputs_unchanged_and_folds_exactly():
    model = ln_ffn_model()
    scheme = scheme_for(NO_VNNI)
    result = smoothquant(model, _data(), quantizable_nodes(model, scheme), scheme, split=False)
    folded = {s.tensor: s.folded_into for s in result.smoothed}
    assert folded.get("ln1") == "LayerNormalization"  # the outlier channel of ln1 is migrated
    assert len(result.model.graph.node) == len(model.graph.node)  # folded, no op added
    feeds = {"x": RNG.standard_normal((8, 4, D)).astype(np.float32)}
    ref = ort_engine.build(model).run(feeds)["y"]
    out = ort_engine.build(result.model).run(feeds)["y"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    layers = {row["name"]: row for entry in result.reports(smooth=True, split=False) for row in entry["layers"]}
    assert layers["mm_q"]["sqnr_after_db"] > layers["mm_q"]["sqnr_before_db"] + 1.0


def test_smoothquant_folds_through_a_reshape_into_gelus_constant():
    model = ln_ffn_model()
    scheme = scheme_for(NO_VNNI)
    data = DataSet({"x": (RNG.standard_normal((64, 4, D)) * np.linspace(0.2, 3, D)).astype(np.float32)})
    result = smoothquant(model, data, quantizable_nodes(model, scheme), scheme, split=False)
    by_tensor = {s.tensor: s.folded_into for s in result.smoothed}
    if "g2d" in by_tensor:  # smoothed only when it gains ≥ 1 dB; then the 0.5 became a vector
        assert by_tensor["g2d"] == "Mul"
        half = next(n for n in result.model.graph.node if n.name == "gelu_half").input[1]
        value = numpy_helper.to_array(next(i for i in result.model.graph.initializer if i.name == half))
        assert value.shape == (FF,)
    feeds = {"x": data.inputs["x"][:8]}
    np.testing.assert_allclose(ort_engine.build(result.model).run(feeds)["y"],
                               ort_engine.build(model).run(feeds)["y"], rtol=1e-5, atol=1e-5)


def test_smoothquant_writes_an_explicit_mul_where_no_fold_is_exact():
    """``ln1`` is also a graph output (like a post-LN BERT's residual stream): 1/s cannot go into the LayerNorm."""
    model = ln_ffn_model()
    model.graph.output.append(helper.make_tensor_value_info("ln1", TensorProto.FLOAT, ["N", 4, D]))
    scheme = scheme_for(NO_VNNI)
    result = smoothquant(model, _data(), quantizable_nodes(model, scheme), scheme, split=False)
    assert {s.tensor: s.folded_into for s in result.smoothed}.get("ln1") == "explicit Mul"
    muls = [n for n in result.model.graph.node if n.op_type == "Mul" and n.input[0] == "ln1"]
    assert len(muls) == 1 and {n.input[0] for n in result.model.graph.node if n.name in ("mm_q", "mm_k")} == \
        {muls[0].output[0]}
    feeds = {"x": RNG.standard_normal((8, 4, D)).astype(np.float32)}
    ref, out = ort_engine.build(model).run(feeds), ort_engine.build(result.model).run(feeds)
    for name in ("y", "ln1"):
        np.testing.assert_allclose(out[name], ref[name], rtol=1e-5, atol=1e-5)


def spiky_model():
    """``z`` → ``mm``: channel 5 carries rare massive values (BERT-FFN-like), the rest ~N(0, 0.15);
    ``x`` (Gaussian) → ``mm_ok``; their sum is the output."""
    nodes = [helper.make_node("MatMul", ["z", "w"], ["yz"], name="mm"),
             helper.make_node("MatMul", ["x", "w_ok"], ["yx"], name="mm_ok"),
             helper.make_node("Add", ["yz", "yx"], ["y"], name="sum")]
    return _model(nodes, [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 256]),
                          helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
                  [_init("w", RNG.standard_normal((256, 8)) * 0.2), _init("w_ok", RNG.standard_normal((16, 8)) * 0.2)])


def _spiky(n):
    z = (RNG.standard_normal((n, 256)) * 0.15).astype(np.float32)
    z[::64, 5] = 30.0  # one sample in 64: the input quantizes near 18 dB, below the guard's 22
    return DataSet({"z": z, "x": RNG.standard_normal((n, 16)).astype(np.float32)})


def test_outlier_channels_are_the_few_huge_ones_only():
    peaks = np.ones(256)
    peaks[[5, 9]] = 50.0
    assert list(outlier_channels(peaks)) == [5, 9]
    assert len(outlier_channels(np.linspace(1, 2, 256))) == 0  # wide but no outliers
    many = np.ones(256)
    many[:40] = 50.0
    assert len(outlier_channels(many)) == 0  # too many to be "a few": not split


def test_outlier_split_quantizes_the_layer_the_guard_kept_in_float():
    model, calib, test = spiky_model(), _spiky(256), _spiky(64)
    feeds = dict(test.inputs)
    ref = ort_engine.build(model).run(feeds)["y"]
    runs = {}
    for split in (False, True):
        options = Int8Options(outlier_split=split, smoothquant=False)
        result = graphopt.optimize(model, passes=[Int8Pass(options)], calib_data=calib, target=NO_VNNI, cache=False)
        proto = graphopt.model_io.to_proto(result.model)
        onnx.checker.check_model(proto)
        runs[split] = (result.report.rows[-1].stats, proto, ort_engine.build(proto).run(feeds)["y"])
    off_stats, _, off_out = runs[False]
    on_stats, on_proto, on_out = runs[True]
    assert list(off_stats["layers_in_float_low_sqnr"]) == ["mm"] and off_stats["layers_quantized"] == 1
    assert on_stats["layers_in_float_low_sqnr"] == {} and on_stats["layers_quantized"] == 2
    assert "DequantizeLinear" in {n.op_type for n in on_proto.graph.node}
    split = next(m for m in on_stats["methods"] if m["method"] == "outlier-split")
    assert [row["name"] for row in split["layers"]] == ["mm"]
    assert split["layers"][0]["sqnr_after_db"] > split["layers"][0]["sqnr_before_db"]
    assert mean_cosine(ref, on_out) > 0.999  # the massive channel is exact, the rest 8-bit
    assert np.abs(on_out - ref).max() < 0.1 * np.abs(ref).max()


def attention_model():
    """Q·Kᵀ (activation × activation) after two weighted projections."""
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj_q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="proj_k"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, D])],
                  [helper.make_tensor_value_info("s", TensorProto.FLOAT, ["N", 4, 4])],
                  [_init("wq", RNG.standard_normal((D, D)) * 0.3), _init("wk", RNG.standard_normal((D, D)) * 0.3)])


@pytest.mark.parametrize(("target", "float_attention", "expect_float"), [
    (NO_VNNI, True, True), (NO_VNNI, False, False), (Target("cpu", cpu_vnni=True), True, False)])
def test_attention_matmuls_stay_float_without_vnni_unless_turned_off(target, float_attention, expect_float):
    model = attention_model()
    assert activation_matmuls(model, ["proj_q", "proj_k", "scores"]) == ["scores"]
    options = Int8Options(float_attention_matmuls=float_attention)
    result = graphopt.optimize(model, passes=[Int8Pass(options)], calib_data=_data(), target=target, cache=False)
    proto = graphopt.model_io.to_proto(result.model)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    scores = next(n for n in proto.graph.node if n.name == "scores")
    assert (producers.get(scores.input[0]) != "DequantizeLinear") == expect_float
    methods = [m["method"] for m in result.report.rows[-1].stats["methods"]]
    assert ("float-attention-matmuls" in methods) == (float_attention and not target.cpu_vnni)


def test_flags_turn_every_method_off_and_smoothquant_on(tmp_path):
    from click.testing import CliRunner

    from graphopt.cli import main

    model_path, calib_path = tmp_path / "m.onnx", tmp_path / "calib.npz"
    onnx.save(ln_ffn_model(), model_path)
    np.savez(calib_path, x=_data(48).inputs["x"])
    report = tmp_path / "report.json"
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--no-simplify",
                                       "--int8", "--calib-data", str(calib_path), "--target", "cpu",
                                       "--no-outlier-split", "--no-float-attention", "--no-range-choice",
                                       "--no-equalization", "--no-bias-correction", "--no-gelu-fusion",
                                       "--no-silu-fusion", "--no-qdq-folds", "--no-batched-gemm", "--report", str(report),
                                       "--no-cache"])
    assert result.exit_code == 0, result.output
    import json

    rows = json.loads(report.read_text())["rows"]
    assert rows[-1]["stats"]["methods"] == []  # SmoothQuant is opt-in: nothing ran
    on = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "on.onnx"), "--no-simplify",
                                   "--int8", "--calib-data", str(calib_path), "--target", "cpu", "--smoothquant",
                                   "--report", str(report), "--no-cache"])
    assert on.exit_code == 0, on.output
    methods = {m["method"]: m for m in json.loads(report.read_text())["rows"][-1]["stats"]["methods"]}
    assert "smoothquant" in methods and methods["smoothquant"]["layers"]
    usage = CliRunner().invoke(main, ["optimize", str(model_path), "--smoothquant"])
    assert usage.exit_code != 0 and "add --int8" in usage.output
