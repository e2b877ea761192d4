"""``graphopt optimize --fp16/--bf16`` exit codes, and fp16 on top of an int8 QDQ model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.pass_base import PassContext
from graphopt.passes.fp16 import Fp16Options, Fp16Pass
from graphopt.passes.fp16.typecheck import elem_types
from graphopt.target import Target

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def mlp(seed=0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((8, 16)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", F, ["N", 8])],
                              [helper.make_tensor_value_info("y", F, ["N", 4])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def invoke(*args):
    return CliRunner().invoke(main, ["optimize", *map(str, args), "--no-cache", "--no-simplify"])


def test_cli_fp16_writes_a_smaller_model(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    out = tmp_path / "m16.onnx"
    result = invoke(src, "-o", out, "--fp16", "--target", "cuda")
    assert result.exit_code == 0, result.output
    written = onnx.load(out)
    assert {i.data_type for i in written.graph.initializer} == {H}
    assert written.graph.input[0].type.tensor_type.elem_type == F


def test_cli_exit_codes_for_bad_inputs(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    assert invoke(src, "-o", tmp_path / "a.onnx", "--fp16", "--bf16").exit_code == 2
    assert invoke(src, "-o", tmp_path / "b.onnx", "--fp16-block-ops", "Relu", "--simplify").exit_code == 2
    assert invoke(src, "-o", tmp_path / "c.onnx", "--fp16", "--fp16-block-nodes", "nope", "--target", "cuda").exit_code == 2
    ints = helper.make_model(helper.make_graph(
        [helper.make_node("Add", ["a", "a"], ["c"], name="add")], "ints",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("c", TensorProto.INT64, [2])]), opset_imports=[helper.make_opsetid("", 17)])
    ints.ir_version = 8
    onnx.save(ints, tmp_path / "ints.onnx")
    result = invoke(tmp_path / "ints.onnx", "-o", tmp_path / "d.onnx", "--fp16", "--target", "cuda")
    assert result.exit_code == 2 and "no float tensors" in result.output


def test_cli_already_fp16_model_exits_zero_and_says_so(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    first = tmp_path / "m16.onnx"
    assert invoke(src, "-o", first, "--fp16", "--target", "cuda").exit_code == 0
    result = CliRunner().invoke(main, ["optimize", str(first), "-o", str(tmp_path / "again.onnx"), "--fp16",
                                       "--target", "cuda", "--no-cache", "--no-simplify", "--json"])
    assert result.exit_code == 0, result.output
    assert "already computes in float16" in result.output


def test_cli_bf16_and_cpu_target_warning(tmp_path):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    result = invoke(src, "-o", tmp_path / "b.onnx", "--bf16", "--target", "cuda", "--json")
    assert result.exit_code == 0, result.output
    assert {i.data_type for i in onnx.load(tmp_path / "b.onnx").graph.initializer} == {TensorProto.BFLOAT16}
    result = invoke(src, "-o", tmp_path / "c.onnx", "--fp16", "--target", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert "slower on CPUs" in result.output


def qdq_model(tmp_path) -> onnx.ModelProto:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"x": rng.standard_normal((4, 8)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    base = mlp()
    # fp32 ops the quantizer leaves alone: fp16 must convert them
    base.graph.node.append(helper.make_node("Tanh", ["y"], ["t"], name="tanh"))
    base.graph.node.append(helper.make_node("Mul", ["t", "gain"], ["z"], name="gain"))
    base.graph.initializer.append(numpy_helper.from_array(np.full(4, 1.5, np.float32), "gain"))
    base.graph.output[0].CopyFrom(helper.make_tensor_value_info("z", F, ["N", 4]))
    onnx.save(base, src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["MatMul"],
                    extra_options={"ActivationSymmetric": True},
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    return onnx.load(dst)


def test_int8_qdq_plus_fp16_keeps_int8_and_converts_the_rest(tmp_path):
    qdq = qdq_model(tmp_path)
    before = {n.name: n.op_type for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert before
    p = Fp16Pass(Fp16Options()).bind(PassContext(Target("trt")))
    result = p(ir.from_proto(qdq))
    out = ir.to_proto(result.model)
    after = {n.name: n.op_type for n in out.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert after == before  # every Q/DQ node survives
    types = elem_types(out)
    for node in out.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert types[node.input[1]] == F  # scales stay fp32
            assert types[node.input[0]] in (F, TensorProto.INT8)  # Q reads fp32, DQ reads int8
    tanh = next(n for n in out.graph.node if n.op_type == "Tanh")
    assert types[tanh.input[0]] == H  # the unquantized op runs in fp16
    x = np.random.default_rng(5).standard_normal((4, 8)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # noqa: E731
    np.testing.assert_allclose(run(out), run(qdq), atol=0.02)
