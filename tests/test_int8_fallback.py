"""Accuracy-aware fallback on a model where one layer is deliberately made sensitive."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8_fallback import Evaluator, run_fallback
from graphopt.passes.int8_scheme import quantizable_nodes, quantize_qdq, scheme_for, tensors_to_calibrate
from graphopt.target import Target

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
    result = graphopt.optimize(model, passes=[Int8Pass(Int8Options(calib_method="minmax"))], calib_data=_data(64),
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
    options = Int8Options(calib_method="minmax", max_float_layers=0)
    result = graphopt.optimize(model, out, passes=[Int8Pass(options)], calib_data=_data(64), eval_data=_data(200),
                               max_accuracy_drop=2.0, target="cpu", cache=False)
    assert not result.passed and not out.exists()
    keep = Int8Options(calib_method="minmax", max_float_layers=0, keep_best=True)
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
