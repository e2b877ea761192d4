"""Accuracy-aware fallback on a model where one layer is deliberately made sensitive."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.fallback import (
    Evaluator,
    edits_of,
    float_layers_model,
    prefix_schedule,
    run_fallback,
)
from graphopt.passes.int8.scheme import (
    keep_int8_flow,
    quantizable_nodes,
    quantize_qdq,
    scheme_for,
    tensors_to_calibrate,
)
from graphopt.target import Target
from graphopt.verify import mean_cosine

RNG = np.random.default_rng(3)


def sensitive_model():
    """mm1 is benign; channel 0 of mm2's input is 1000× the others, so an 8-bit range on that
    input wipes out every other channel: only mm2 must stay in float."""
    scale = np.ones(16, np.float32)
    scale[0] = 1000.0
    w2 = RNG.standard_normal((16, 6)).astype(np.float32)
    w2[0] /= 1000.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Mul", ["h", "scale"], ["hs"], name="outlier"),
             helper.make_node("MatMul", ["hs", "w2"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(RNG.standard_normal((16, 16)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(scale, "scale"), numpy_helper.from_array(w2, "w2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _data(n):
    return DataSet({"x": RNG.standard_normal((n, 16)).astype(np.float32)})


def test_fallback_keeps_only_the_sensitive_layer_in_float():
    model = sensitive_model()
    result = graphopt.optimize(model, passes=[Int8Pass(Int8Options(calib_method="minmax", min_sqnr_db=None))], calib_data=_data(64),
                               eval_data=_data(200), max_accuracy_drop=2.0, target="cpu", cache=False)
    stats = result.report.rows[-1].stats
    assert stats["layers_in_float"] == ["mm2"]
    assert len(stats["fallback"]) == 2  # all quantized, then mm2 in float
    assert "ms" in stats["fallback"][1]  # latency reported after each step
    assert result.passed
    proto = graphopt.model_io.to_proto(result.model)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    node = {n.name: n for n in proto.graph.node}
    assert producers[node["mm1"].input[1]] == "DequantizeLinear"
    assert producers.get(node["mm2"].input[1]) != "DequantizeLinear"


def test_without_fallback_the_gate_fails_and_keep_best_still_writes(tmp_path):
    model = sensitive_model()
    out = tmp_path / "m.int8.onnx"
    options = Int8Options(calib_method="minmax", max_float_layers=0, min_sqnr_db=None)
    result = graphopt.optimize(model, out, passes=[Int8Pass(options)], calib_data=_data(64), eval_data=_data(200),
                               max_accuracy_drop=2.0, target="cpu", cache=False)
    assert not result.passed and not out.exists()
    keep = Int8Options(calib_method="minmax", max_float_layers=0, keep_best=True, min_sqnr_db=None)
    result = graphopt.optimize(model, out, passes=[Int8Pass(keep)], calib_data=_data(64), eval_data=_data(200),
                               max_accuracy_drop=2.0, target="cpu", cache=False)
    assert not result.passed and out.exists() and result.output_path == out


def test_run_fallback_returns_best_model_when_budget_cannot_be_met():
    model = sensitive_model()
    scheme = scheme_for(Target("cpu", cpu_vnni=True))
    nodes = quantizable_nodes(model, scheme)
    calib = _data(64).inputs["x"]
    h = calib @ numpy_helper.to_array(model.graph.initializer[0])
    ranges = {"x": (float(calib.min()), float(calib.max())), "h": (float(h.min()), float(h.max())),
              "hs": (-3000.0, 3000.0), "y": (-10.0, 10.0)}
    assert set(tensors_to_calibrate(model, nodes)) <= set(ranges)
    evaluator = Evaluator(model, _data(100))

    def quantize(layers):
        return quantize_qdq(model, scheme, ranges, layers)

    outcome = run_fallback(quantize, ["mm1", "mm2"], evaluator, budget=-1.0)
    assert not outcome.met
    assert outcome.sensitivity["mm2"] > outcome.sensitivity["mm1"]
    assert outcome.drop == min(step.drop for step in outcome.steps)
    assert [len(s.float_layers) for s in outcome.steps] == [0, 1, 2]
    assert isinstance(outcome.model, onnx.ModelProto)


def _cnn():
    """Conv-Relu-Conv + residual Add + Relu-Conv-GAP-Flatten-Gemm: flow ops and a residual between layers."""
    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c2", "r1"], ["a"], name="residual"),
             helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1)]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8, scale=0.1), w("w2", 8, 8, 3, 3, scale=0.15), w("b2", 8, scale=0.1),
             w("w3", 8, 8, 3, 3, scale=0.15), w("b3", 8, scale=0.1), w("wg", 10, 8), w("bg", 10, scale=0.1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weighted_inputs(model):
    """Weighted node name → op types producing its inputs (DequantizeLinear = quantized)."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name: tuple(producers.get(i, "const") for i in n.input)
            for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")}


def _slow_and_fast(model, calib):
    from graphopt.passes.int8.calibration import calibrate

    scheme = scheme_for(Target("cpu", cpu_vnni=True))
    nodes = quantizable_nodes(model, scheme)
    ranges = calibrate(model, calib, tensors_to_calibrate(model, nodes), "minmax").ranges
    weighted = [n.name for n in model.graph.node if n.name in set(nodes) and n.op_type in ("Conv", "Gemm", "MatMul")]
    others = [n for n in nodes if n not in set(weighted)]

    def slow(layers):
        return quantize_qdq(model, scheme, ranges, keep_int8_flow(model, [n for n in nodes if n in set(layers)
                                                                          or n in others]))

    full = slow(weighted)
    return slow, edits_of(full, model, weighted, nodes), weighted, full


def _float_weight_layers(model):
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")
            and producers.get(n.input[1]) != "DequantizeLinear"}


def test_graph_edit_candidates_equal_requantized_models_on_matmuls():
    """MatMul model: every 'only these layers quantized' candidate built by graph edits is the quantizer's own."""
    model, data = sensitive_model(), _data(32)
    slow, fast, weighted, _ = _slow_and_fast(model, data)
    for subset in ([], weighted, *[[name] for name in weighted]):
        a, b = slow(subset), fast(subset)
        onnx.checker.check_model(b)
        assert _weighted_inputs(a) == _weighted_inputs(b), subset
        out_a = ort_engine.build(a).run_batches(data.batches(16))
        out_b = ort_engine.build(b).run_batches(data.batches(16))
        np.testing.assert_allclose(out_a["y"], out_b["y"], rtol=1e-5, atol=1e-5)


def test_graph_edit_candidates_match_requantized_cnn_up_to_fused_relu_rounding():
    """CNN: the same layers are in float with the same weights; where the quantizer folded a Relu into
    the Q of a Conv output, the edit keeps that (post-Relu) Q, so outputs agree to one rounding step."""
    data = DataSet({"x": RNG.standard_normal((32, 3, 8, 8)).astype(np.float32)})
    model = _cnn()
    slow, fast, weighted, _ = _slow_and_fast(model, data)
    for subset in ([], weighted, *[[name] for name in weighted], weighted[::2], weighted[1:]):
        a, b = slow(subset), fast(subset)
        onnx.checker.check_model(b)
        assert _float_weight_layers(a) == _float_weight_layers(b) == set(weighted) - set(subset)
        out_a = ort_engine.build(a).run_batches(data.batches(16))["y"]
        out_b = ort_engine.build(b).run_batches(data.batches(16))["y"]
        assert mean_cosine(out_a, out_b) > 0.999, subset
        if not subset:
            reference = ort_engine.build(model).run_batches(data.batches(16))["y"]
            np.testing.assert_allclose(out_b, reference, rtol=1e-5, atol=1e-5)


def test_fast_fallback_picks_the_same_layers_and_model_as_the_slow_path():
    model = sensitive_model()
    slow, fast, weighted, full = _slow_and_fast(model, _data(64))
    evaluator = Evaluator(model, _data(200), probe_samples=64)
    a = run_fallback(slow, weighted, evaluator, budget=2.0, first=full)
    b = run_fallback(fast, weighted, evaluator, budget=2.0, first=full)
    assert a.met and b.met and a.float_layers == b.float_layers == ("mm2",)
    assert [s.float_layers for s in a.steps] == [s.float_layers for s in b.steps]
    feeds = next(iter(_data(50).batches(50)))
    np.testing.assert_allclose(ort_engine.build(a.model).session.run(None, feeds)[0],
                               ort_engine.build(b.model).session.run(None, feeds)[0], rtol=1e-5, atol=1e-5)


def test_float_layers_model_restores_the_original_weight_bit_for_bit():
    model = _cnn()
    _, _, weighted, full = _slow_and_fast(model, DataSet({"x": RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)}))
    edited = float_layers_model(full, model, ["conv2"])
    conv2 = next(n for n in edited.graph.node if n.name == "conv2")
    inits = {i.name: i for i in edited.graph.initializer}
    original = {i.name: i for i in model.graph.initializer}
    assert np.array_equal(numpy_helper.to_array(inits[conv2.input[1]]), numpy_helper.to_array(original["w2"]))
    assert np.array_equal(numpy_helper.to_array(inits[conv2.input[2]]), numpy_helper.to_array(original["b2"]))
    assert len(edited.graph.node) < len(full.graph.node)  # the weight/bias DQs are gone


def test_growing_batches_then_bisection_finds_the_shortest_prefix():
    assert prefix_schedule(0) == []
    assert prefix_schedule(1) == [1]
    assert prefix_schedule(5) == [1, 2, 4, 5]
    assert prefix_schedule(8) == [1, 2, 4, 8]

    class FakeEvaluator:
        """drop = 10 − (number of float layers among a..j); layer sensitivity = its position."""

        def __init__(self):
            self.compared = 0

        def _cmp(self, model):
            from graphopt.verify import Comparison, OutputMetric
            quantized = int(model.doc_string)
            drop = float(quantized)
            return Comparison((OutputMetric("y", "cosine", 1 - drop / 100, 1.0, 0.0, 1.0, True),), 1)

        def compare(self, model):
            self.compared += 1
            return self._cmp(model)

        def probe(self, model):
            return self._cmp(model)

    layers = [f"l{i}" for i in range(10)]

    def quantize(chosen):
        model = onnx.ModelProto()
        model.doc_string = str(len(chosen))
        return model

    timed = []

    def latency(models):  # one call, every step's model, timed side by side
        timed.append([int(m.doc_string) for m in models])
        return [100.0 - int(m.doc_string) for m in models]

    evaluator = FakeEvaluator()
    outcome = run_fallback(quantize, layers, evaluator, budget=3.5, latency=latency)
    assert outcome.met and len(outcome.float_layers) == 7  # 3 still quantized → drop 3
    assert [len(s.float_layers) for s in outcome.steps] == [0, 1, 2, 4, 8, 6, 7]
    assert evaluator.compared == 7  # instead of 8 one-at-a-time steps
    assert timed == [[10, 9, 8, 6, 2, 4, 3]]  # quantized layers of each step's model, in step order
    assert [s.latency_ms for s in outcome.steps] == [90.0, 91.0, 92.0, 94.0, 98.0, 96.0, 97.0]


def test_graph_edits_on_the_trt_layout_stay_deployable():
    from graphopt.passes.int8.trt_check import check_trt_qdq

    model = _cnn()
    data = DataSet({"x": RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)})
    scheme = scheme_for(Target("trt"))
    nodes = quantizable_nodes(model, scheme)
    ranges = {name: (-4.0, 4.0) for name in tensors_to_calibrate(model, nodes)}
    full = quantize_qdq(model, scheme, ranges, nodes)
    assert check_trt_qdq(full) == []
    weighted = ["conv1", "conv2", "conv3", "fc"]
    fast = edits_of(full, model, weighted, nodes, output_quantized_ops=())
    for keep in (["conv1", "conv3", "fc"], ["conv2"], []):
        candidate = fast(keep)
        assert check_trt_qdq(candidate) == [], keep
        assert _float_weight_layers(candidate) == set(weighted) - set(keep)
        out = ort_engine.build(candidate).run_batches(data.batches(16))["y"]
        assert np.isfinite(out).all()


def test_every_layer_in_float_gives_back_the_float_model_with_float_readers_of_conv_outputs():
    """Hard-swish between convs: the float HardSigmoid reads conv1's dequantized output. With every
    layer sent back to float no Q/DQ may stay (not on conv outputs for that float reader, not on the
    graph input), and the outputs are the original model's exactly; with only conv2 quantized, conv1's
    output keeps the pair conv2 reads."""
    def w(name, *shape, scale=0.3):
        return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["c"], ["g"], name="hsig", alpha=1 / 6, beta=0.5),
             helper.make_node("Mul", ["c", "g"], ["h"], name="hswish"),
             helper.make_node("Conv", ["h", "w2", "b2"], ["y"], name="conv2", pads=[1, 1, 1, 1])]
    inits = [w("w1", 8, 3, 3, 3), w("b1", 8, scale=0.1), w("w2", 4, 8, 3, 3, scale=0.15), w("b2", 4, scale=0.1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = DataSet({"x": RNG.standard_normal((16, 3, 8, 8)).astype(np.float32)})
    _, fast, weighted, _ = _slow_and_fast(model, data)
    all_float = fast([])
    assert not [n.op_type for n in all_float.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    reference = ort_engine.build(model).run_batches(data.batches(16))["y"]
    np.testing.assert_array_equal(ort_engine.build(all_float).run_batches(data.batches(16))["y"], reference)
    only_conv2 = fast(["conv2"])
    producers = {o: n.op_type for n in only_conv2.graph.node for o in n.output}
    conv2 = next(n for n in only_conv2.graph.node if n.name == "conv2")
    assert producers[conv2.input[0]] == "DequantizeLinear" and producers[conv2.input[1]] == "DequantizeLinear"


def test_batch1_latency_times_every_model_side_by_side():
    """One finite median per model, from the profiler's interleaved rounds (graphopt.profiling.timing)."""
    import pathlib

    from graphopt.data import load_data
    from graphopt.passes.int8.fallback import batch1_latency_ms

    root = pathlib.Path(__file__).resolve().parents[1] / "models"
    model = onnx.load(str(root / "digits_cnn.onnx"))
    times = batch1_latency_ms([model, model, model], load_data(root / "digits_cnn_eval.npz"), threads=1, runs=5)
    assert len(times) == 3 and all(0 < t < 1e4 for t in times)
