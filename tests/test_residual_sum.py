"""simplify on cpu: residual Adds read by a LayerNorm become ``Sum`` (exact), and onnxruntime then keeps
Add + LayerNormalization instead of fusing its slower CPU SkipLayerNormalization."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt.api import optimize
from graphopt.passes.residual_sum import residual_sums
from graphopt.passes.simplify import SimplifyOptions, SimplifyPass

C = 16


def _block(decomposed: bool = False, extra_reader: bool = False, opset: int = 17) -> onnx.ModelProto:
    """x → MatMul + bias → Add(residual x) → LayerNorm (one node, or the ReduceMean/Sub/… form)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
             helper.make_node("Add", ["mm", "bias"], ["dense"], name="bias_add"),
             helper.make_node("Add", ["dense", "x"], ["res"], name="residual")]
    if decomposed:
        nodes += [helper.make_node("ReduceMean", ["res"], ["mu"], axes=[-1], name="mean"),
                  helper.make_node("Sub", ["res", "mu"], ["d"], name="sub"),
                  helper.make_node("Mul", ["d", "d"], ["d2"], name="sq"),
                  helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], name="var"),
                  helper.make_node("Add", ["var", "eps"], ["ve"], name="add_eps"),
                  helper.make_node("Sqrt", ["ve"], ["sd"], name="sqrt"),
                  helper.make_node("Div", ["d", "sd"], ["n"], name="div"),
                  helper.make_node("Mul", ["n", "gamma"], ["ng"], name="scale"),
                  helper.make_node("Add", ["ng", "beta"], ["y"], name="shift")]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1, name="ln"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, C])]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["res"], ["side"], name="side"))
        outputs.append(helper.make_tensor_value_info("side", TensorProto.FLOAT, ["N", 8, C]))
    rng = np.random.default_rng(7)  # the same weights every call
    inits = [numpy_helper.from_array(rng.standard_normal((C, C)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "bias"),
             numpy_helper.from_array(rng.uniform(0.5, 1.5, C).astype(np.float32), "gamma"),
             numpy_helper.from_array(rng.standard_normal(C).astype(np.float32), "beta"),
             numpy_helper.from_array(np.array(1e-5, np.float32), "eps")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, C])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def _ort_optimized_ops(model: onnx.ModelProto, tmp_path) -> list[str]:
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    options.log_severity_level = 3  # not the note that an optimized file is machine-specific
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return _ops(onnx.load(options.optimized_model_filepath))


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_cpu_simplify_writes_the_residual_as_sum_and_ort_keeps_layernorm_unfused(tmp_path):
    result = optimize(_block(), tmp_path / "cpu.onnx", target="cpu")
    simplified = onnx.load(str(tmp_path / "cpu.onnx"))
    residual = next(n for n in simplified.graph.node if "LayerNormalization" in
                    [r.op_type for r in simplified.graph.node if n.output[0] in r.input])
    assert residual.op_type == "Sum"
    assert _ops(simplified).count("Sum") == 1
    assert result.report.rows[0].stats["residual_sums"] == 1
    x = np.random.default_rng(1).standard_normal((3, 8, C)).astype(np.float32)
    np.testing.assert_allclose(_run(simplified, x), _run(_block(), x), rtol=1e-5, atol=1e-5)
    # what the rewrite is for: onnxruntime fuses the Add form (shapes known after simplify), not the Sum form
    optimize(_block(), tmp_path / "kept.onnx", target="cpu",
             passes=[SimplifyPass(SimplifyOptions(residual_sum=False))])
    assert "SkipLayerNormalization" in _ort_optimized_ops(onnx.load(str(tmp_path / "kept.onnx")), tmp_path)
    assert "SkipLayerNormalization" not in _ort_optimized_ops(simplified, tmp_path)


def test_only_the_residual_add_before_a_layernorm_is_rewritten():
    assert residual_sums(ir.from_proto(_block())) == ["residual"]  # not the bias Add (a constant input)
    decomposed = ir.from_proto(_block(decomposed=True))
    assert residual_sums(decomposed) == ["residual"]  # not the Adds inside the LayerNorm either
    assert [n.op_type for n in decomposed.graph].count("Add") == 3


def test_other_adds_and_targets_are_left_alone(tmp_path):
    assert residual_sums(ir.from_proto(_block(extra_reader=True))) == []  # a Relu reads the sum too
    rows = _block()
    for value in (*rows.graph.input, *rows.graph.output):
        del value.type.tensor_type.shape.dim[1]  # [N, C]: 2-D rows, which onnxruntime does not fuse
    assert residual_sums(ir.from_proto(rows)) == []
    assert residual_sums(ir.from_proto(_block(decomposed=True, opset=7))) == []  # Sum broadcasts only from opset 8
    optimize(_block(), tmp_path / "trt.onnx", target="trt")
    assert "Sum" not in _ops(onnx.load(str(tmp_path / "trt.onnx")))
