"""int8 scheme rules found on MiniLM-L6: int8 flow only into quantized layers, and the SQNR guard."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.calibration import TensorHistogram, calibrate
from graphopt.passes.int8.scheme import low_resolution_layers, quantizable_nodes, scheme_for
from graphopt.target import Target
from graphopt.verify import mean_cosine

RNG = np.random.default_rng(11)
CPU = Target("cpu", cpu_vnni=True)


def _model(nodes, inputs, outputs, inits):
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def encoder_block():
    """MatMul → Reshape → (mask) Add → Softmax, MatMul → residual Add → LayerNorm, Reshape → MatMul."""
    d = 8
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Reshape", ["h", "shape"], ["hr"], name="reshape_to_float"),
        helper.make_node("Add", ["hr", "mask"], ["scores"], name="mask_add"),
        helper.make_node("Softmax", ["scores"], ["p"], name="softmax", axis=-1),
        helper.make_node("Add", ["p", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["ln"], name="ln", axis=-1),
        helper.make_node("Reshape", ["ln", "shape"], ["lr"], name="reshape_to_int8"),
        helper.make_node("MatMul", ["lr", "w2"], ["y"], name="mm2"),
    ]
    inits = [_w("w1", d, d), _w("w2", d, d), numpy_helper.from_array(np.array([-1, 4, d], np.int64), "shape"),
             numpy_helper.from_array(np.ones(d, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(d, np.float32), "beta")]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, d]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 4, d])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, d])], inits)


def _mask(n):
    """HF-style additive mask: 0 where attended, finfo(float32).min on padding."""
    mask = np.zeros((n, 4, 8), np.float32)
    mask[:, :, 6:] = np.finfo(np.float32).min
    return mask


def test_flow_ops_and_residual_adds_are_quantized_only_when_a_quantized_layer_reads_them():
    model = encoder_block()
    nodes = quantizable_nodes(model, scheme_for(CPU))
    assert "reshape_to_int8" in nodes  # LayerNorm → Reshape → MatMul: int8 flows into mm2
    assert "reshape_to_float" not in nodes  # read by the mask Add, which Softmax reads
    assert "mask_add" not in nodes and "residual" not in nodes  # read by Softmax / LayerNorm
    assert {"mm1", "mm2"} <= set(nodes)
    trt = quantizable_nodes(model, scheme_for(Target("trt")))
    assert "residual" not in trt and "mask_add" not in trt


def test_attention_mask_never_gets_a_quantization_range():
    n = 48
    data = DataSet({"x": RNG.standard_normal((n, 4, 8)).astype(np.float32), "mask": _mask(n)})
    model = encoder_block()
    result = graphopt.optimize(model, passes=[Int8Pass()], calib_data=data, target="cpu", cache=False)
    proto = graphopt.model_io.to_proto(result.model)
    quantized_inputs = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    assert "mask" not in quantized_inputs and "scores" not in quantized_inputs
    feeds = {"x": data.inputs["x"][:16], "mask": data.inputs["mask"][:16]}
    ref = ort_engine.build(model).run(feeds)["y"]
    out = ort_engine.build(proto).run(feeds)["y"]
    assert mean_cosine(ref, out) > 0.995


def test_sqnr_of_a_histogram_matches_the_direct_formula():
    values = RNG.standard_normal(200_000).astype(np.float32)
    state = TensorHistogram()
    state.update(values)
    low, high = float(values.min()), float(values.max())
    step = (high - low) / 255
    expected = 10 * np.log10(np.mean(values.astype(np.float64) ** 2) / (step**2 / 12))
    assert abs(state.sqnr_db(low, high) - expected) < 0.05
    symmetric = 10 * np.log10(np.mean(values.astype(np.float64) ** 2) / ((max(-low, high) / 127) ** 2 / 12))
    assert abs(state.sqnr_db(low, high, symmetric=True) - symmetric) < 0.05
    # measured noise of real 8-bit rounding agrees with s²/12 (the model the guard relies on)
    q = np.round((values - low) / step) * step + low
    measured = 10 * np.log10(np.mean(values.astype(np.float64) ** 2) / np.mean((q - values) ** 2))
    assert abs(measured - expected) < 0.3


def heavy_tail_model():
    """mm_ok reads a Gaussian ``x``; mm_tail reads ``z``, GELU-like: |z| mostly < 0.5, one value of 30."""
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm_ok"),
             helper.make_node("MatMul", ["z", "w2"], ["g"], name="mm_tail"),
             helper.make_node("Add", ["h", "g"], ["y"], name="sum")]
    inits = [_w("w1", 16, 8), _w("w2", 32, 8)]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
              helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 32])]
    return _model(nodes, inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], inits)


def _heavy_tail_data(n):
    z = (RNG.standard_normal((n, 32)) * 0.15).astype(np.float32)
    z.reshape(-1)[RNG.integers(z.size)] = 30.0  # one per set: rms stays ≈ 0.3
    return DataSet({"x": RNG.standard_normal((n, 16)).astype(np.float32), "z": z})


def test_guard_keeps_the_heavy_tailed_layer_in_float_and_reports_it():
    model = heavy_tail_model()
    data = _heavy_tail_data(512)
    scheme = scheme_for(CPU)
    nodes = quantizable_nodes(model, scheme)
    calib = calibrate(model, data, ["x", "z", "h", "g", "y"], "minmax", histograms=True)
    low = low_resolution_layers(model, nodes, calib.sqnr_db, 22.0)
    assert list(low) == ["mm_tail"] and calib.sqnr_db["x"] > 30.0

    result = graphopt.optimize(model, passes=[Int8Pass()], calib_data=data, target="cpu", cache=False)
    stats = result.report.rows[-1].stats
    assert list(stats["layers_in_float_low_sqnr"]) == ["mm_tail"]
    assert stats["layers_quantized"] == 1
    proto = graphopt.model_io.to_proto(result.model)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    node = {n.name: n for n in proto.graph.node}
    assert producers[node["mm_ok"].input[1]] == "DequantizeLinear"
    assert producers.get(node["mm_tail"].input[1]) != "DequantizeLinear"
    assert any("SQNR" in note for note in result.report.rows[-1].notes)

    test = _heavy_tail_data(64)
    feeds = {"x": test.inputs["x"], "z": test.inputs["z"]}
    ref = ort_engine.build(model).run(feeds)["y"]
    guarded = ort_engine.build(proto).run(feeds)["y"]
    off = graphopt.optimize(model, passes=[Int8Pass(Int8Options(min_sqnr_db=None))], calib_data=data,
                            target="cpu", cache=False)
    unguarded = ort_engine.build(graphopt.model_io.to_proto(off.model)).run(feeds)["y"]
    assert off.report.rows[-1].stats["layers_quantized"] == 2
    assert mean_cosine(ref, guarded) > mean_cosine(ref, unguarded)
