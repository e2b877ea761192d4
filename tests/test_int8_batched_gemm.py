"""MatMul + bias Add written as Reshape → Gemm → Reshape before quantizing on cpu (exact; QGemm in onnxruntime
also with static input shapes, where MatMul + Add became a float Gemm)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.methods.batched_gemm import batch_gemms
from graphopt.passes.int8.scheme import shape_readers_skip_dequantize
from graphopt.target import Target
from graphopt.verify import mean_cosine

K, N = 16, 24
VNNI = Target("cpu", cpu_vnni=True)


def _layer(dims=("B", "S", K), bias_first: bool = True, extra_reader: bool = False,
           bias_shape: tuple[int, ...] = (N,)) -> onnx.ModelProto:
    """x → MatMul(W) → Add(bias, ·) → Relu → y (the bias Add written bias-first, as PyTorch exports it)."""
    rng = np.random.default_rng(3)
    add_inputs = ["bias", "mm"] if bias_first else ["mm", "bias"]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="dense"),
             helper.make_node("Add", add_inputs, ["h"], name="dense_bias"),
             helper.make_node("Relu", ["h"], ["y"], name="act")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [*dims[:-1], N])]
    if extra_reader:
        nodes.append(helper.make_node("Neg", ["mm"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, [*dims[:-1], N]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))], outputs,
        [numpy_helper.from_array(rng.standard_normal((K, N)).astype(np.float32), "w"),
         numpy_helper.from_array(rng.standard_normal(N).astype(np.float32).reshape(bias_shape), "bias")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_the_gemm_form_computes_the_same_for_any_leading_dims():
    model = _layer()
    batched = batch_gemms(model, ["dense"])
    assert batched.layers == ["dense"]
    ops = [n.op_type for n in batched.model.graph.node]
    assert "MatMul" not in ops and ops.count("Add") == 0 and ops.count("Gemm") == 1
    assert next(n for n in batched.model.graph.node if n.op_type == "Gemm").name == "dense"
    onnx.checker.check_model(batched.model)
    for shape in ((2, 5, K), (1, 9, K), (3, 1, K)):
        x = np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32)
        np.testing.assert_allclose(_run(batched.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_a_bias_stored_as_1x1xN_becomes_the_gemm_vector():
    model = _layer(bias_shape=(1, 1, N))
    batched = batch_gemms(model, ["dense"])
    gemm = next(n for n in batched.model.graph.node if n.op_type == "Gemm")
    assert [list(i.dims) for i in batched.model.graph.initializer if i.name == gemm.input[2]] == [[N]]
    x = np.random.default_rng(5).standard_normal((2, 3, K)).astype(np.float32)
    np.testing.assert_allclose(_run(batched.model, x), _run(model, x), rtol=1e-5, atol=1e-5)


def test_rank_two_needs_no_reshape_and_other_layers_are_left_alone():
    flat = batch_gemms(_layer(dims=("M", K), bias_first=False), ["dense"])
    assert [n.op_type for n in flat.model.graph.node] == ["Gemm", "Relu"]
    x = np.random.default_rng(0).standard_normal((7, K)).astype(np.float32)
    np.testing.assert_allclose(_run(flat.model, x), _run(_layer(dims=("M", K), bias_first=False), x), rtol=1e-5, atol=1e-5)
    assert batch_gemms(_layer(), []).layers == []  # not chosen for quantization
    assert batch_gemms(_layer(extra_reader=True), ["dense"]).layers == []  # the MatMul output is read twice


def _ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    options.log_severity_level = 3  # not the note that an optimized file is machine-specific
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


def test_static_shapes_quantize_to_qgemm_not_a_float_gemm(tmp_path):
    static = _layer(dims=(4, 8, K))  # batch fixed to 4: calibration runs batches of 4 samples
    calib = DataSet({"x": np.random.default_rng(1).standard_normal((64, 8, K)).astype(np.float32)})

    def quantize(**options):
        result = graphopt.optimize(static, passes=[Int8Pass(Int8Options(calib_batch_size=4, **options))],
                                   calib_data=calib, target=VNNI, cache=False)
        return result.report.rows[-1].stats, graphopt.model_io.to_proto(result.model)

    stats, proto = quantize()
    assert next(m for m in stats["methods"] if m["method"] == "batched-gemm")["layers"] == [{"name": "dense"}]
    ops = _ort_optimized_ops(proto, tmp_path)
    assert "QGemm" in ops and "Gemm" not in ops and "DequantizeLinear" not in ops
    # what the rewrite is for: as MatMul + Add, onnxruntime fuses the static pair into a float Gemm
    _, kept = quantize(batched_gemm=False)
    assert "QGemm" not in _ort_optimized_ops(kept, tmp_path)
    x = np.random.default_rng(2).standard_normal((4, 8, K)).astype(np.float32)
    assert mean_cosine(_run(static, x), ort_engine.build(proto).run({"x": x})["y"]) > 0.999


def test_shape_readers_read_the_int8_tensor():
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"], name="dq"),
             helper.make_node("Shape", ["dq"], ["shape"], name="shape")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(128, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert shape_readers_skip_dequantize(model) == 1
    assert [n.op_type for n in model.graph.node] == ["QuantizeLinear", "Shape"]
    assert model.graph.node[1].input[0] == "q"
