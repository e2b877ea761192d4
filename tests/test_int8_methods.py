"""int8 methods for CNNs and recognisers (issue 12): range choice, cross-layer equalization, bias correction."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.calibration import TensorHistogram
from graphopt.passes.int8.methods.bias_correction import apply_shifts, measure_shifts
from graphopt.passes.int8.methods.equalization import equalize, find_pairs
from graphopt.passes.int8.methods.range_choice import candidates, choose_ranges, expected_error
from graphopt.passes.int8.scheme import quantizable_nodes, quantize_qdq, scheme_for
from graphopt.target import Target
from graphopt.verify import mean_cosine

RNG = np.random.default_rng(7)
NO_VNNI = Target("cpu", cpu_vnni=False)
SCHEME = scheme_for(NO_VNNI)


def _init(name, array):
    return numpy_helper.from_array(np.asarray(array, dtype=np.float32), name)


def _model(nodes, inits, out_channels, size=8):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, size, size])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def separable_model(act="Relu", bias_on_dw=True):
    """x → Conv 1×1 (4→8, badly balanced channels) → act → depthwise 3×3 (8) → Relu → Conv 1×1 (8→6)."""
    w1 = RNG.standard_normal((8, 4, 1, 1)) * np.array([0.02, 5, 0.3, 1, 8, 0.05, 2, 0.5])[:, None, None, None]
    dw = RNG.standard_normal((8, 1, 3, 3)) * np.array([4, 0.1, 1, 0.02, 0.3, 6, 1, 2])[:, None, None, None]
    w3 = RNG.standard_normal((6, 8, 1, 1)) * 0.5
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="pw1")]
    if act is None:
        dw_in = "c1"
    elif act == "Clip6":
        nodes.append(helper.make_node("Clip", ["c1", "zero", "six"], ["a1"], name="act1"))
        dw_in = "a1"
    else:
        nodes.append(helper.make_node(act, ["c1"], ["a1"], name="act1"))
        dw_in = "a1"
    nodes += [helper.make_node("Conv", [dw_in, "dw", "bdw"] if bias_on_dw else [dw_in, "dw"], ["c2"], name="dw",
                               group=8, pads=[1, 1, 1, 1]),
              helper.make_node("Relu", ["c2"], ["a2"], name="act2"),
              helper.make_node("Conv", ["a2", "w3"], ["y"], name="pw2")]
    inits = [_init("w1", w1), _init("b1", RNG.standard_normal(8)), _init("dw", dw), _init("bdw", RNG.standard_normal(8)),
             _init("w3", w3), _init("zero", 0.0), _init("six", 6.0)]
    return _model(nodes, inits, 6)


def _x(n=16):
    return RNG.standard_normal((n, 4, 8, 8)).astype(np.float32)


# --- cross-layer equalization ------------------------------------------------------------------

@pytest.mark.parametrize("act", ["Relu", None, "LeakyRelu"])
def test_equalization_leaves_fp32_outputs_unchanged(act):
    model = separable_model(act)
    result = equalize(model, SCHEME)
    assert [(p.first, p.second) for p in result.pairs] == [("pw1", "dw"), ("dw", "pw2")]
    feeds = {"x": _x()}
    ref = ort_engine.build(model).run(feeds)["y"]
    out = ort_engine.build(result.model).run(feeds)["y"]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    first = result.pairs[0]
    assert first.spread_after < first.spread_before / 10  # the depthwise's channel ranges are now balanced
    report = result.report()
    assert report["method"] == "equalization" and len(report["layers"]) == 2


def test_equalization_skips_activations_that_are_not_positively_homogeneous():
    for act in ("Clip6", "HardSwish", "Sigmoid"):
        pairs, skipped = find_pairs(separable_model(act))
        assert [(p.first.name, p.second.name) for p in pairs] == [("dw", "pw2")], act
        assert sum(skipped.values()) == 1


def test_equalization_balances_weight_ranges_exactly():
    """After convergence r₁_i = r₂_i for the pair pw1 → dw (module docstring: both √(r₁r₂))."""
    model = separable_model("Relu")
    result = equalize(model, SCHEME, nodes=["pw1", "dw"])  # only that pair
    inits = {i.name: numpy_helper.to_array(i) for i in result.model.graph.initializer}
    nodes = {n.name: n for n in result.model.graph.node}
    w1, dw = inits[nodes["pw1"].input[1]], inits[nodes["dw"].input[1]]
    np.testing.assert_allclose(np.abs(w1).reshape(8, -1).max(1), np.abs(dw).reshape(8, -1).max(1), rtol=1e-5)


# --- GELU fusion ---------------------------------------------------------------------------------

def gelu_model():
    """x → Conv 1×1 → exact five-node GELU (x/√2, erf, +1, ·x, ·0.5) → Conv 1×1 → y (opset 17)."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="pw1"),
             helper.make_node("Div", ["h", "sqrt2"], ["hd"], name="gelu_div"),
             helper.make_node("Erf", ["hd"], ["he"], name="gelu_erf"),
             helper.make_node("Add", ["one", "he"], ["hp"], name="gelu_add"),
             helper.make_node("Mul", ["hp", "h"], ["hm"], name="gelu_mul"),
             helper.make_node("Mul", ["hm", "half"], ["g"], name="gelu_half"),
             helper.make_node("Conv", ["g", "w2"], ["y"], name="pw2")]
    inits = [_init("w1", RNG.standard_normal((8, 4, 1, 1))), _init("b1", RNG.standard_normal(8)),
             _init("w2", RNG.standard_normal((6, 8, 1, 1)) * 0.5), _init("sqrt2", np.sqrt(2.0)), _init("one", 1.0),
             _init("half", 0.5)]
    return _model(nodes, inits, 6)


def test_gelu_fusion_is_exact_and_survives_quantization():
    from graphopt.passes.int8.methods.gelu_fusion import fuse_gelus

    model = gelu_model()
    fused, count, why = fuse_gelus(model)
    assert count == 1 and why is None and fused.opset_import[0].version == 20
    assert [n.op_type for n in fused.graph.node] == ["Conv", "Gelu", "Conv"]
    feeds = {"x": _x()}
    np.testing.assert_allclose(ort_engine.build(fused).run(feeds)["y"], ort_engine.build(model).run(feeds)["y"],
                               rtol=1e-5, atol=1e-5)
    stats, proto = _run(model, DataSet({"x": _x(48)}), equalization=False, bias_correction=False)
    assert "Gelu" in {n.op_type for n in proto.graph.node}
    assert next(m for m in stats["methods"] if m["method"] == "gelu-fusion")["changed"].startswith("1 exact GELU")
    _, plain = _run(model, DataSet({"x": _x(48)}), equalization=False, bias_correction=False, gelu_fusion=False)
    assert "Gelu" not in {n.op_type for n in plain.graph.node} and "Erf" in {n.op_type for n in plain.graph.node}


# --- SiLU fusion ---------------------------------------------------------------------------------

def silu_model(extra_reader: bool = False):
    """x → Conv 1×1 → SiLU (Sigmoid, Mul) → Conv 1×1 → y; ``extra_reader``: the Sigmoid also feeds the output sum."""
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="pw1"),
             helper.make_node("Sigmoid", ["h"], ["hs"], name="silu_sigmoid"),
             helper.make_node("Mul", ["hs", "h"], ["g"], name="silu_mul"),
             helper.make_node("Conv", ["g", "w2"], ["y0" if extra_reader else "y"], name="pw2")]
    if extra_reader:
        nodes.append(helper.make_node("Add", ["y0", "hs"], ["y"], name="side"))
    inits = [_init("w1", RNG.standard_normal((8, 4, 1, 1))), _init("b1", RNG.standard_normal(8)),
             _init("w2", RNG.standard_normal((8 if extra_reader else 6, 8, 1, 1)) * 0.5)]
    return _model(nodes, inits, 8 if extra_reader else 6)


def _ort_ops(model, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]


def test_sigmoid_gates_run_in_int8_on_cpu(tmp_path):
    """The SiLU between two quantized convs is quantized itself: onnxruntime runs QLinearSigmoid + QLinearMul."""
    model = silu_model()
    nodes = quantizable_nodes(model, scheme_for(Target("cpu", cpu_vnni=True)))
    assert {"silu_sigmoid", "silu_mul"} <= set(nodes)
    stats, proto = _run(model, DataSet({"x": _x(48)}), equalization=False, bias_correction=False)
    ops = _ort_ops(proto, tmp_path)
    assert {"QLinearSigmoid", "QLinearMul"} <= set(ops) and not {"Sigmoid", "Mul", "QuickGelu"} & set(ops)
    assert next(m for m in stats["methods"] if m["method"] == "silu-fusion")["changed"] == "no SiLU left in float"
    feeds = {"x": _x()}
    assert mean_cosine(ort_engine.build(model).run(feeds)["y"], ort_engine.build(proto).run(feeds)["y"]) > 0.99
    # a Mul that is no sigmoid gate stays float
    plain_mul = silu_model()
    plain_mul.graph.node[1].op_type = "Relu"  # Mul(h, Relu(h))
    assert "silu_mul" not in quantizable_nodes(plain_mul, scheme_for(Target("cpu", cpu_vnni=True)))


def test_silu_fusion_writes_float_silus_as_one_kernel(tmp_path):
    from graphopt.passes.int8.methods.silu_fusion import fuse_silus

    model = silu_model()
    fused, count = fuse_silus(model)
    assert count == 1 and [n.op_type for n in fused.graph.node] == ["Conv", "QuickGelu", "Conv"]
    feeds = {"x": _x()}
    np.testing.assert_allclose(ort_engine.build(fused).run(feeds)["y"], ort_engine.build(model).run(feeds)["y"],
                               rtol=1e-5, atol=1e-5)
    assert fuse_silus(model, quantized={"silu_mul"}) == (model, 0)  # a quantized gate is left to int8
    # the SiLU kept in float (--int8-exclude): fused, and onnxruntime runs one kernel instead of DQ, Sigmoid, Mul
    data, kept_float = DataSet({"x": _x(48)}), ("silu_sigmoid", "silu_mul")
    stats, proto = _run(model, data, equalization=False, bias_correction=False, exclude_nodes=kept_float)
    assert next(m for m in stats["methods"] if m["method"] == "silu-fusion")["changed"].startswith("1 float SiLU")
    _, plain = _run(model, data, equalization=False, bias_correction=False, exclude_nodes=kept_float,
                    silu_fusion=False)
    assert "Sigmoid" in _ort_ops(plain, tmp_path) and "QuickGelu" not in _ort_ops(plain, tmp_path)
    assert "QuickGelu" in _ort_ops(proto, tmp_path) and "Sigmoid" not in _ort_ops(proto, tmp_path)
    reference = ort_engine.build(model).run(feeds)["y"]
    fused_cos = mean_cosine(reference, ort_engine.build(proto).run(feeds)["y"])
    plain_cos = mean_cosine(reference, ort_engine.build(plain).run(feeds)["y"])
    assert fused_cos > 0.99 and fused_cos >= plain_cos - 0.005  # as accurate as the two-node float SiLU


def test_silu_fusion_leaves_a_sigmoid_read_elsewhere_and_other_targets():
    from graphopt.passes.int8.methods.silu_fusion import find_silus

    assert find_silus(silu_model(extra_reader=True)) == []
    assert len(find_silus(silu_model())) == 1
    result = graphopt.optimize(silu_model(), passes=[Int8Pass(Int8Options(equalization=False))],
                               calib_data=DataSet({"x": _x(48)}), target="trt", cache=False)
    assert not {"QuickGelu", "QLinearSigmoid"} & {n.op_type for n in graphopt.model_io.to_proto(result.model).graph.node}


def test_gelu_fusion_leaves_a_gelu_whose_inner_value_is_read_elsewhere():
    from graphopt.passes.int8.methods.gelu_fusion import find_gelus

    model = gelu_model()
    model.graph.output.append(helper.make_tensor_value_info("he", TensorProto.FLOAT, None))
    assert find_gelus(model) == []


# --- range choice ------------------------------------------------------------------------------

def test_range_choice_picks_the_candidate_with_the_lowest_measured_error():
    """A post-ReLU-like bulk with a heavy tail of outliers (|Student-t|, 2 degrees of freedom): min/max wastes
    the 8 bits on the few largest values, a tight percentile clips too many; the chosen range must be the one
    whose real quantization error is least."""
    values = np.abs(RNG.standard_t(2, 200_000)).astype(np.float32)
    state = TensorHistogram()
    for chunk in np.split(values, 10):
        state.update(chunk.reshape(1, -1))

    def measured(low, high):
        scale = (high - low) / 255.0
        zero = np.round(-low / scale)
        q = np.clip(np.round(values / scale) + zero, 0, 255)
        return float(np.mean(((q - zero) * scale - values) ** 2))

    options = {name: (max(state.min, -t), min(state.max, t)) for name, t in candidates(state, symmetric=False).items()}
    real = {name: measured(*r) for name, r in options.items()}
    ranges, rows = choose_ranges({"t": state}, {"t": (state.min, state.max)}, symmetric=False)
    assert rows[0].candidate != "minmax" and rows[0].candidate in options
    best = min(real.values())
    assert measured(*ranges["t"]) <= best * 1.05  # the histogram's estimate agrees with the real error
    assert real["minmax"] > 1.1 * best  # min/max is not the answer here
    # the histogram estimate itself tracks the real error of every candidate
    for name, r in options.items():
        assert expected_error(state, *r, symmetric=False) == pytest.approx(real[name], rel=0.25), name
    assert rows[0].sqnr_after_db > rows[0].sqnr_before_db


# --- bias correction ---------------------------------------------------------------------------

SHIFT_SEED = 5


def _shift_model():
    """x → Conv 1×1 (no bias) → y. The weights sit off the 7-bit grid, most rounded the same way, so
    quantizing them shifts every output channel's mean (x has a large positive mean)."""
    levels = 63.5  # onnxruntime's symmetric 7-bit scale: max|w_c| / 63.5 (range [−64, 63])
    base = np.random.default_rng(SHIFT_SEED).integers(-60, 61, size=(6, 4, 1, 1)).astype(np.float64)
    w = (base + 0.45) / levels  # each weight rounds down by 0.45 steps
    w[:, 0] = 1.0  # every channel's peak: the scale is 1 / 63.5 exactly
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 8, 8])], [_init("w", w)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_bias_correction_moves_the_quantized_output_mean_toward_float():
    model = _shift_model()
    rng = np.random.default_rng(3)  # its own draws: the test does not depend on which tests ran before
    data = DataSet({"x": (rng.standard_normal((64, 4, 8, 8)) + 3.0).astype(np.float32)})
    nodes = quantizable_nodes(model, SCHEME)
    ranges = {"x": (float(data.inputs["x"].min()), float(data.inputs["x"].max())), "y": (-40.0, 40.0)}
    quantized = quantize_qdq(model, SCHEME, ranges, nodes)
    shifts = measure_shifts(quantized, model, data, ["conv"])
    corrected, layers = apply_shifts(model, shifts)
    assert layers == ["conv"] and len(corrected.graph.node[0].input) == 3  # a bias was created
    requantized = quantize_qdq(corrected, SCHEME, ranges, nodes)
    feeds = {"x": (rng.standard_normal((32, 4, 8, 8)) + 3.0).astype(np.float32)}  # held-out inputs
    ref = ort_engine.build(model).run(feeds)["y"].mean(axis=(0, 2, 3))
    before = ort_engine.build(quantized).run(feeds)["y"].mean(axis=(0, 2, 3))
    after = ort_engine.build(requantized).run(feeds)["y"].mean(axis=(0, 2, 3))
    assert np.abs(before - ref).mean() > 0.01
    assert np.abs(after - ref).mean() < 0.25 * np.abs(before - ref).mean()
    np.testing.assert_allclose(shifts["conv"].shift, before - ref, rtol=0.25, atol=0.004)


def _matmul_bias_model():
    """x → MatMul → Add(bias) → y, with the Conv test's off-grid weights (as [in, out])."""
    conv = _shift_model()
    w = numpy_helper.to_array(conv.graph.initializer[0])[:, :, 0, 0].T.copy()
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "bias"], ["y"], name="bias_add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 6])],
                              [_init("w", w), _init("bias", np.linspace(-1, 1, 6))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_bias_correction_of_a_matmul_is_measured_after_its_bias_add():
    model = _matmul_bias_model()
    data = DataSet({"x": (np.random.default_rng(4).standard_normal((64, 8, 4)) + 3.0).astype(np.float32)})
    nodes = quantizable_nodes(model, SCHEME)
    ranges = {"x": (float(data.inputs["x"].min()), float(data.inputs["x"].max())), "y": (-40.0, 40.0),
              "mm": (-40.0, 40.0)}
    before = measure_shifts(quantize_qdq(model, SCHEME, ranges, nodes), model, data, ["mm"])["mm"]
    corrected, layers = apply_shifts(model, {"mm": before})
    assert layers == ["mm"]
    after = measure_shifts(quantize_qdq(corrected, SCHEME, ranges, nodes), model, data, ["mm"])["mm"]
    assert before.relative_shift > 0.002
    assert after.relative_shift < 0.25 * before.relative_shift  # the report sees the corrected bias
    assert after.sqnr_db > before.sqnr_db


# --- the pass and the CLI ----------------------------------------------------------------------

def _run(model, data, **options):
    result = graphopt.optimize(model, passes=[Int8Pass(Int8Options(**options))], calib_data=data, target=NO_VNNI,
                               cache=False)
    return result.report.rows[-1].stats, graphopt.model_io.to_proto(result.model)


def test_the_pass_reports_each_method_and_each_can_be_turned_off():
    model = separable_model("Relu")
    data = DataSet({"x": _x(48)})
    stats, proto = _run(model, data, range_choice=True, equalization=True, bias_correction=True)
    methods = {m["method"]: m for m in stats["methods"]}
    assert {"range-choice", "equalization", "bias-correction"} <= set(methods)
    assert len(methods["equalization"]["layers"]) == 2
    assert methods["bias-correction"]["layers"]
    onnx.checker.check_model(proto)
    off, _ = _run(model, data, range_choice=False, equalization=False, bias_correction=False)
    assert not {"range-choice", "equalization", "bias-correction"} & {m["method"] for m in off["methods"]}


def test_an_explicit_calibration_method_is_not_overridden_by_the_range_choice():
    stats, _ = _run(separable_model("Relu"), DataSet({"x": _x(48)}), calib_method="minmax", range_choice=True,
                    equalization=False, bias_correction=False)
    assert "range-choice" not in {m["method"] for m in stats["methods"]}


@pytest.mark.parametrize(("flags", "absent"), [
    ([], set()),
    (["--no-range-choice"], {"range-choice"}),
    (["--no-equalization"], {"equalization"}),
    (["--no-bias-correction"], {"bias-correction"}),
    (["--no-gelu-fusion"], {"gelu-fusion"}),
    (["--no-silu-fusion"], {"silu-fusion"}),
    (["--no-qdq-folds"], {"qdq-folds"}),
    (["--no-batched-gemm"], {"batched-gemm"}),
    (["--no-range-choice", "--no-equalization", "--no-bias-correction", "--no-gelu-fusion", "--no-silu-fusion",
      "--no-qdq-folds", "--no-batched-gemm"],
     {"range-choice", "equalization", "bias-correction", "gelu-fusion", "silu-fusion", "qdq-folds", "batched-gemm"}),
])
def test_cli_flags_turn_the_methods_off(tmp_path, flags, absent):
    import json

    from click.testing import CliRunner

    from graphopt.cli import main

    model_path, calib_path, report = tmp_path / "m.onnx", tmp_path / "calib.npz", tmp_path / "r.json"
    onnx.save(separable_model("Relu"), model_path)
    np.savez(calib_path, x=_x(48))
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "out.onnx"), "--no-simplify",
                                       "--int8", "--calib-data", str(calib_path), "--target", "cpu",
                                       "--report", str(report), "--no-cache", *flags])
    assert result.exit_code == 0, result.output
    methods = {m["method"] for m in json.loads(report.read_text())["rows"][-1]["stats"]["methods"]}
    assert not methods & absent
    from graphopt.passes.int8 import Int8Options as Defaults

    defaults = Defaults()
    on_by_default = {name for name, flag in (("range-choice", defaults.range_choice),
                                              ("equalization", defaults.equalization),
                                              ("bias-correction", defaults.bias_correction),
                                              ("gelu-fusion", defaults.gelu_fusion),
                                              ("silu-fusion", defaults.silu_fusion),
                                              ("qdq-folds", defaults.qdq_folds),
                                              ("batched-gemm", defaults.batched_gemm)) if flag}
    assert on_by_default - absent <= methods


def test_cli_refuses_the_method_flags_without_int8(tmp_path):
    from click.testing import CliRunner

    from graphopt.cli import main

    model_path = tmp_path / "m.onnx"
    onnx.save(separable_model("Relu"), model_path)
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "out.onnx"),
                                       "--no-bias-correction"])
    assert result.exit_code != 0 and "--int8" in result.output


def test_bias_correction_leaves_a_gemm_whose_bias_is_an_activation():
    """Gemm(x, W, m) with ``m`` computed at run time (simplify fuses MatMul + Add so): no bias to fold into."""
    nodes = [helper.make_node("ReduceMean", ["y"], ["m"], axes=[0], keepdims=1, name="mean"),
             helper.make_node("Gemm", ["x", "w", "m"], ["out"], name="gemm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
                                           helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])],
                              [_init("w", RNG.standard_normal((16, 8)))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    data = DataSet({"x": RNG.standard_normal((32, 4, 16)).astype(np.float32),
                    "y": RNG.standard_normal((32, 2, 8)).astype(np.float32)})
    result = graphopt.optimize(model, passes=[Int8Pass(Int8Options())], calib_data=data, target=NO_VNNI, cache=False)
    report = next(m for m in result.report.rows[-1].stats["methods"] if m["method"] == "bias-correction")
    assert report["layers"] == []
