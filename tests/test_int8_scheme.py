"""The int8 scheme per target and the static TensorRT deployability check."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.inspection import is_quant_op
from graphopt.passes.int8.scheme import (
    is_quantized,
    quantizable_nodes,
    quantize_qdq,
    scheme_for,
    tensors_to_calibrate,
)
from graphopt.passes.int8.trt_check import check_trt_qdq
from graphopt.target import Target

RNG = np.random.default_rng(2)


def test_cpu_scheme_is_u8_activations_s8_per_channel_weights():
    scheme = scheme_for(Target("cpu", cpu_vnni=True))
    assert (scheme.activation_type, scheme.activation_symmetric, scheme.per_channel, scheme.reduce_range) == (
        "uint8", False, True, False)
    assert "Softmax" not in scheme.op_types and "LayerNormalization" not in scheme.op_types
    assert scheme_for(Target("cpu", cpu_vnni=False)).reduce_range  # 7-bit weights without VNNI
    assert scheme_for(Target("cpu"), activations="int8").activation_symmetric


def test_gpu_schemes_are_symmetric_s8_without_output_qdq_or_bias_quantization():
    for kind in ("trt", "cuda"):
        scheme = scheme_for(Target(kind))
        assert scheme.activation_type == "int8" and scheme.activation_symmetric and scheme.per_channel
        assert not scheme.quantize_bias
        assert set(scheme.outputs_not_quantized) >= {"Conv", "MatMul", "Gemm", "Add"}
        assert "MaxPool" not in scheme.op_types and "Relu" not in scheme.op_types
        extra = scheme.ort_extra_options()
        assert extra["ActivationSymmetric"] and extra["WeightSymmetric"] and not extra["QuantizeBias"]
        # measured: entropy lost up to 35 points of agreement against percentile on this layout (passes/int8.py)
        assert scheme.default_method == "percentile"


def _conv_model(opset=17):
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Add", ["r", "x4"], ["a"], name="res"),
             helper.make_node("MatMul", ["a", "m"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 4, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b"),
             numpy_helper.from_array(RNG.standard_normal((6, 6)).astype(np.float32), "m")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6]),
                                           helper.make_tensor_value_info("x4", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 6, 6])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _quantized(kind):
    model = _conv_model()
    scheme = scheme_for(Target(kind, cpu_vnni=True))
    nodes = quantizable_nodes(model, scheme)
    ranges = {name: (-3.0, 3.0) for name in tensors_to_calibrate(model, nodes)}
    return quantize_qdq(model, scheme, ranges, nodes)


def test_trt_layout_passes_the_trt_check():
    model = _quantized("trt")
    assert check_trt_qdq(model) == []
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 3


def test_cpu_layout_fails_the_trt_check_for_uint8():
    problems = check_trt_qdq(_quantized("cpu"))
    assert any("uint8" in p or "UINT8" in p for p in problems)


def _set_initializer(model, name, array):
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(array, name))
            return
    raise KeyError(name)


def test_trt_check_reports_each_broken_rule():
    good = _quantized("trt")
    q = next(n for n in good.graph.node if n.op_type == "QuantizeLinear")

    nonzero = onnx.ModelProto()
    nonzero.CopyFrom(good)
    _set_initializer(nonzero, q.input[2], np.array(3, dtype=np.int8))
    assert any("non-zero zero point" in p for p in check_trt_qdq(nonzero))

    bad_scale = onnx.ModelProto()
    bad_scale.CopyFrom(good)
    _set_initializer(bad_scale, q.input[1], np.array(-1.0, dtype=np.float32))
    assert any("finite and > 0" in p for p in check_trt_qdq(bad_scale))

    old = onnx.ModelProto()
    old.CopyFrom(good)
    old.opset_import[0].version = 12
    assert any("opset 12" in p for p in check_trt_qdq(old))

    # quantizing an int64 tensor, and a Q feeding something other than a DQ
    nodes = [helper.make_node("QuantizeLinear", ["i", "s", "z"], ["iq"], name="q_int"),
             helper.make_node("Cast", ["iq"], ["y"], name="cast", to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("i", TensorProto.INT64, [3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
                              [numpy_helper.from_array(np.array(0.5, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    problems = check_trt_qdq(bad)
    assert any("only float tensors" in p for p in problems)
    assert any("a Q must feed only DQ" in p for p in problems)


def test_trt_check_wants_per_channel_only_on_weights_with_the_output_channel_axis():
    good = _quantized("trt")
    dq_w = next(n for n in good.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w"))
    wrong_axis = onnx.ModelProto()
    wrong_axis.CopyFrom(good)
    node = next(n for n in wrong_axis.graph.node if n.name == dq_w.name)
    for attr in node.attribute:
        if attr.name == "axis":
            attr.i = 1
    assert any("axis 1" in p and "needs axis 0" in p for p in check_trt_qdq(wrong_axis))

    dq_act = next(n for n in good.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("x"))
    per_channel_act = onnx.ModelProto()
    per_channel_act.CopyFrom(good)
    _set_initializer(per_channel_act, dq_act.input[1], np.array([0.1, 0.2], np.float32))
    assert any("per-channel scale on an activation" in p for p in check_trt_qdq(per_channel_act))

    float_weight = onnx.ModelProto()
    float_weight.CopyFrom(good)
    conv = next(n for n in float_weight.graph.node if n.op_type == "Conv")
    float_weight.graph.initializer.append(numpy_helper.from_array(np.ones((4, 4, 3, 3), np.float32), "w_float"))
    conv.input[1] = "w_float"
    assert any("float weight" in p for p in check_trt_qdq(float_weight))


def test_already_quantized_uses_inspects_rule():
    """int8 calls a model quantized exactly when inspect does: contrib ops (MatMulNBits, QGemm) included."""
    def graph_with(op: str, domain: str = "") -> onnx.ModelProto:
        node = helper.make_node(op, ["x", "w"], ["y"], name="n", domain=domain)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
        return helper.make_model(graph)

    for op, domain in [("MatMulNBits", "com.microsoft"), ("QGemm", "com.microsoft"), ("MatMulInteger", ""),
                       ("QLinearConv", ""), ("DequantizeLinear", "")]:
        assert is_quant_op(op)
        assert is_quantized(graph_with(op, domain)) == [op]
    assert is_quantized(graph_with("MatMul")) == []
    assert is_quantized(graph_with("Gemm")) == []


def _residual_model(rows: bool = False):
    """LayerNorm output read by a MatMul (int8) and by the residual Add (float, LayerNorm reads it);
    an embedding Gather (int8 table) read by a float Add. ``rows``: both read the LayerNorm output
    flattened to 2-D rows (a Reshape, as :mod:`graphopt.passes.token_rows` leaves the first layer)."""
    d = 8
    nodes = [helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
             helper.make_node("Add", ["emb", "x"], ["h"], name="embed_add"),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["ln"], axis=-1, name="ln1"),
             helper.make_node("MatMul", ["ln", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "ln"], ["res"], name="residual"),
             helper.make_node("LayerNormalization", ["res", "g", "b"], ["y"], axis=-1, name="ln2")]
    if rows:
        nodes.insert(3, helper.make_node("Reshape", ["ln_3d", "flat"], ["ln"], name="flatten"))
        nodes[2].output[0] = "ln_3d"
    inits = [numpy_helper.from_array(RNG.standard_normal((600, d)).astype(np.float32) * 0.1, "table"),
             numpy_helper.from_array(RNG.standard_normal((d, d)).astype(np.float32), "w"),
             numpy_helper.from_array(np.ones(d, np.float32), "g"), numpy_helper.from_array(np.zeros(d, np.float32), "b"),
             numpy_helper.from_array(np.array([-1, d], np.int64), "flat")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 4]),
                                           helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, d])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", d] if rows else ["N", 4, d])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_float_readers_read_the_float_tensor_not_its_rounded_copy(monkeypatch):
    import graphopt.passes.int8.scheme as scheme_module

    model = _residual_model()
    scheme = scheme_for(Target("cpu", cpu_vnni=True))
    monkeypatch.setattr(scheme_module, "EMBEDDING_MIN_BYTES", 1024)  # the 19 kB test table counts as an embedding
    nodes = quantizable_nodes(model, scheme)
    assert {"mm", "embed"} <= set(nodes) and "residual" not in nodes
    ranges = {name: (-4.0, 4.0) for name in tensors_to_calibrate(model, nodes)}
    quantized = quantize_qdq(model, scheme, ranges, nodes)
    producers = {o: n for n in quantized.graph.node for o in n.output}
    residual = next(n for n in quantized.graph.node if n.name == "residual")
    matmul = next(n for n in quantized.graph.node if n.name == "mm")
    assert "ln" in residual.input  # the LayerNorm output in float, not DQ(Q(ln))
    assert producers[matmul.input[0]].op_type == "DequantizeLinear"  # the MatMul still reads int8
    # the Gather runs on the int8 table: its float reader keeps the DQ (no float copy of the table appears)
    embed_add = next(n for n in quantized.graph.node if n.name == "embed_add")
    assert producers[embed_add.input[0]].op_type == "DequantizeLinear"
    assert "table" not in {i.name for i in quantized.graph.initializer}


def test_a_float_reshape_listed_as_quantized_still_counts_as_float():
    """The quantizer lists a Reshape between quantized ops with them, but one that reads the float LayerNorm
    output computes in float: the residual Add reads its float output, not DQ(Q(·))."""
    model = _residual_model(rows=True)
    scheme = scheme_for(Target("cpu", cpu_vnni=True))
    nodes = quantizable_nodes(model, scheme)
    assert {"mm", "flatten"} <= set(nodes)  # the case at stake: the Reshape is among the quantized nodes
    ranges = {name: (-4.0, 4.0) for name in tensors_to_calibrate(model, nodes)}
    quantized = quantize_qdq(model, scheme, ranges, nodes)
    producers = {o: n for n in quantized.graph.node for o in n.output}
    residual = next(n for n in quantized.graph.node if n.name == "residual")
    matmul = next(n for n in quantized.graph.node if n.name == "mm")
    assert "ln" in residual.input and producers["ln"].op_type == "Reshape"
    assert producers[matmul.input[0]].op_type == "DequantizeLinear"
