"""graphopt inspect: MACs computed by hand, sparsity / 2:4, precision, subgraphs, custom ops, CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.inspection import inspect_model, parse_shape_overrides
from tests.conftest import conv_bn_model


def make_model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="tests")
    model.ir_version = 8
    return model


def vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def mac_model():
    """Conv (grouped, strided), Gemm (transB) and a broadcasting batched MatMul with known dims."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w_conv"),
        numpy_helper.from_array(rng.standard_normal((6, 1, 3, 3)).astype(np.float32), "w_group"),
        numpy_helper.from_array(rng.standard_normal((32, 16)).astype(np.float32), "w_gemm"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["y_conv"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w_group"], ["y_group"], group=3, strides=[2, 2]),
        helper.make_node("Gemm", ["a", "w_gemm"], ["y_gemm"], transB=1),
        helper.make_node("MatMul", ["m1", "m2"], ["y_mm"]),
    ]
    inputs = [vi("x", [2, 3, 10, 10]), vi("a", [4, 16]), vi("m1", [2, 3, 5, 7]), vi("m2", [3, 7, 4])]
    outputs = [vi("y_conv", None), vi("y_group", None), vi("y_gemm", None), vi("y_mm", None)]
    return make_model(nodes, inputs, outputs, inits)


def test_macs_by_hand():
    info = inspect_model(mac_model())
    conv = 2 * 8 * 10 * 10 * 3 * 3 * 3  # N·Cout·Hout·Wout·(Cin/group)·kH·kW, pad 1 keeps 10x10
    group = 2 * 6 * 4 * 4 * 1 * 3 * 3  # group 3: Cin/group = 1; stride 2, no pad: (10-3)//2+1 = 4
    gemm = 4 * 16 * 32  # M·K·N with B given as [N, K] (transB)
    matmul = (2 * 3) * 5 * 7 * 4  # batch (2,3) broadcast with (3,) · M·K·N
    assert info["macs"]["by_op_type"] == {"Conv": conv + group, "Gemm": gemm, "MatMul": matmul}
    assert info["macs"]["total"] == conv + group + gemm + matmul
    assert info["macs"]["unknown_nodes"] == 0 and info["macs"]["complete"]
    out_shapes = {row["name"]: row.get("inferred_shape") for row in info["outputs"]}
    assert out_shapes["y_group"] == [2, 6, 4, 4] and out_shapes["y_mm"] == [2, 3, 5, 4]
    json.dumps(info)  # serialisable


def test_dynamic_batch_counted_per_sample_then_fixed_by_override():
    model = conv_bn_model(batch="N")
    info = inspect_model(model)
    assert info["inputs"][0]["shape"] == ["N", 1, 8, 8]
    static = inspect_model(conv_bn_model(batch=1))
    conv, gemm = 4 * 8 * 8 * 1 * 3 * 3, 256 * 10
    assert static["macs"]["by_op_type"] == {"Conv": conv, "Gemm": gemm} and static["macs"]["per_sample"] is None
    assert info["macs"]["total"] == static["macs"]["total"] and info["macs"]["unknown_nodes"] == 0
    assert info["macs"]["per_sample"] == {"batch_axis": "N", "size": 1}
    fixed = inspect_model(model, {"input": (3, 1, 8, 8)})  # --shape overrides the per-sample count
    assert fixed["macs"]["by_op_type"] == {"Conv": 3 * conv, "Gemm": 3 * gemm}
    assert fixed["macs"]["unknown_nodes"] == 0 and fixed["macs"]["per_sample"] is None
    assert fixed["inputs"][0]["override"] == [3, 1, 8, 8]
    # the caller's model is not modified
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    ir_model = ir.from_proto(model)
    inspect_model(ir_model)
    inspect_model(ir_model, {"input": (3, 1, 8, 8)})
    assert str(ir_model.graph.inputs[0].shape[0]) == "N"


def test_other_unknown_dims_stay_unknown_with_a_hint(model_path, tmp_path):
    ids = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "S", 16])
    w = numpy_helper.from_array(np.ones((16, 8), np.float32), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [ids], [vi("y", None)], [w])
    info = inspect_model(model)
    assert info["macs"]["per_sample"] is None and info["macs"]["unknown_nodes"] == 1
    onnx.save(model, str(tmp_path / "seq.onnx"))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "seq.onnx")])
    assert result.exit_code == 0 and "--shape x=1x1x16" in result.output and "per sample" not in result.output
    named = inspect_model(conv_bn_model(batch="N"))
    assert named["macs"]["per_sample"]["batch_axis"] == "N"


def attention_model(batch="N", seq=6, heads=2, head_dim=4):
    """Self-attention as a BERT export writes it: projections, heads split by a Reshape whose target
    shape is computed from ``Shape`` at run time, ``Q·Kᵀ`` and ``softmax·V`` MatMuls of activations."""
    d = heads * head_dim
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32), n) for n in ("wq", "wk", "wv")]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
              (("i0", [0]), ("i1", [1]), ("tail", [heads, head_dim]), ("flat", [d]))]
    nodes = [helper.make_node("MatMul", ["x", w], [o]) for w, o in (("wq", "q0"), ("wk", "k0"), ("wv", "v0"))]
    nodes += [helper.make_node("Shape", ["x"], ["sh"]),
              helper.make_node("Gather", ["sh", "i0"], ["n"], axis=0),
              helper.make_node("Gather", ["sh", "i1"], ["s"], axis=0),
              helper.make_node("Concat", ["n", "s", "tail"], ["split"], axis=0),
              helper.make_node("Concat", ["n", "s", "flat"], ["merge"], axis=0)]
    for name in ("q", "k", "v"):
        nodes += [helper.make_node("Reshape", [f"{name}0", "split"], [f"{name}1"]),
                  helper.make_node("Transpose", [f"{name}1"], [f"{name}h"],
                                   perm=[0, 2, 3, 1] if name == "k" else [0, 2, 1, 3])]
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["scores"], name="qk"),
              helper.make_node("Softmax", ["scores"], ["p"], axis=-1),
              helper.make_node("MatMul", ["p", "vh"], ["ctx"], name="pv"),
              helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ctx_t", "merge"], ["y"])]
    return make_model(nodes, [vi("x", [batch, seq, d])], [vi("y", [batch, seq, d])], inits)


def test_attention_matmuls_of_activations_are_counted():
    seq, heads, head_dim = 6, 2, 4
    d = heads * head_dim
    projections = 3 * seq * d * d
    attention = 2 * heads * seq * seq * head_dim  # Q·Kᵀ (S×Dh · Dh×S) and P·V (S×S · S×Dh) per head
    by_node = {}
    for model in (attention_model(batch="N"), attention_model(batch=1)):
        info = inspect_model(model)
        assert info["macs"]["by_op_type"] == {"MatMul": projections + attention}, info["notes"]
        assert info["macs"]["nodes_counted"] == 5 and info["macs"]["complete"]
        by_node[info["macs"]["per_sample"] is not None] = info["macs"]["total"]
    assert by_node[True] == by_node[False]
    from onnxruntime import InferenceSession  # the hand-built graph is a valid model

    x = np.random.default_rng(1).standard_normal((2, seq, d)).astype(np.float32)
    assert InferenceSession(attention_model().SerializeToString()).run(None, {"x": x})[0].shape == (2, seq, d)


def test_shape_override_errors():
    assert parse_shape_overrides(["x=1x3x224x224", "ids = 2,128"]) == {"x": (1, 3, 224, 224), "ids": (2, 128)}
    for bad in ["x", "x=", "x=1x", "=1x2", "x=1xa", "x=0x3"]:
        with pytest.raises(InputError, match="--shape expects"):
            parse_shape_overrides([bad])
    with pytest.raises(InputError, match="model's inputs are: input"):
        inspect_model(conv_bn_model(), {"nope": (1, 1, 8, 8)})
    with pytest.raises(InputError, match="rank 3 but input 'input' has rank 4"):
        inspect_model(conv_bn_model(), {"input": (1, 8, 8)})
    with pytest.raises(InputError, match="fixes it at 8"):
        inspect_model(conv_bn_model(), {"input": (1, 1, 9, 8)})


def test_sparsity_and_2_4():
    w_gemm = np.arange(1, 129, dtype=np.float32).reshape(8, 16)
    w_gemm.flat[np.arange(0, 128, 3)[:40]] = 0.0  # exactly 40 zeros, not 2:4
    w_conv = np.ones((4, 8, 1, 1), dtype=np.float32)
    w_conv[:, 0::4] = 0.0  # groups of 4 along Cin (axis 1): positions 0 and 1 are zero
    w_conv[:, 1::4] = 0.0
    w_mm = np.ones((8, 3), dtype=np.float32)
    w_mm[2::4, :] = 0.0  # MatMul B is [K, N]: groups run along K (axis 0)
    w_mm[3::4, :] = 0.0
    w_last = np.ones((4, 8, 1, 1), dtype=np.float32)
    w_last[0::2] = 0.0  # half zeros, but along Cout, so not 2:4 along Cin
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(w_gemm, "w_gemm"), (w_conv, "w_conv"), (w_mm, "w_mm"), (w_last, "w_last")]]
    nodes = [
        helper.make_node("Gemm", ["a", "w_gemm"], ["y1"]),
        helper.make_node("Conv", ["x", "w_conv"], ["y2"]),
        helper.make_node("MatMul", ["m", "w_mm"], ["y3"]),
        helper.make_node("Conv", ["x", "w_last"], ["y4"]),
    ]
    model = make_model(nodes, [vi("a", [2, 8]), vi("x", [1, 8, 4, 4]), vi("m", [2, 8])],
                       [vi("y1", None), vi("y2", None), vi("y3", None), vi("y4", None)], inits)
    sparsity = inspect_model(model)["sparsity"]
    rows = {r["name"]: r for r in sparsity["weights"]}
    assert rows["w_gemm"]["zeros"] == 40 and rows["w_gemm"]["fraction"] == pytest.approx(40 / 128)
    assert rows["w_conv"]["fraction"] == 0.5 and rows["w_conv"]["axis"] == 1
    assert rows["w_mm"]["axis"] == 0
    assert set(sparsity["weights_2_4"]) == {"w_conv", "w_mm"}
    assert not rows["w_last"]["two_four"] and not rows["w_gemm"]["two_four"]
    zeros = 40 + 16 + 12 + 16
    assert sparsity["overall"] == pytest.approx(zeros / (128 + 32 + 24 + 32))
    assert sparsity["any_2_4"]


def test_fp16_model():
    base = conv_bn_model()
    for init in base.graph.initializer:
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name))
    for value in (*base.graph.input, *base.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    info = inspect_model(base)
    prec = info["precision"]
    assert prec["fp16"] and not prec["quantized"] and not prec["bf16"]
    assert prec["summary"] == "fp16"
    assert info["parameters"]["bytes_by_dtype"] == {"float16": 2626 * 2}
    assert inspect_model(conv_bn_model())["precision"]["summary"] == "fp32"


def _quantize(tmp_path, fmt):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(0)
            self.items = iter([{"input": rng.random((1, 1, 8, 8), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.items, None)

    src, dst = tmp_path / "f.onnx", tmp_path / f"q_{fmt}.onnx"
    onnx.save(conv_bn_model(batch=1), str(src))
    quantize_static(str(src), str(dst), Reader(), quant_format=getattr(QuantFormat, fmt))
    return dst


def test_qdq_and_qoperator_detection(tmp_path):
    prec = inspect_model(_quantize(tmp_path, "QDQ"))["precision"]
    assert prec["quantized"] and prec["quant_format"] == "QDQ" and prec["summary"] == "int8 (QDQ)"
    assert "QuantizeLinear" in prec["quant_ops"] and prec["int_weight_dtypes"]
    qop = inspect_model(_quantize(tmp_path, "QOperator"))
    assert qop["precision"]["summary"] == "int8 (QOperator)"
    assert qop["macs"]["by_op_type"].get("QLinearConv") == 4 * 8 * 8 * 9  # N=1, Cout 4, 8x8, Cin 1, 3x3


def test_subgraph_ops_counted():
    then_g = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["t1"]), helper.make_node("Relu", ["t1"], ["t"])],
                               "then", [], [vi("t", [2, 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["a"], ["e"])], "else", [], [vi("e", [2, 4])])
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    nodes = [helper.make_node("If", ["cond"], ["out"], then_branch=then_g, else_branch=else_g)]
    model = make_model(nodes, [vi("cond", [], TensorProto.BOOL), vi("a", [2, 4])], [vi("out", [2, 4])], [w])
    info = inspect_model(model)
    assert info["op_histogram"] == {"If": 1, "MatMul": 1, "Relu": 1, "Neg": 1}
    assert info["nodes"] == {"main_graph": 1, "total": 4, "subgraphs": 2}
    assert info["macs"]["total"] == 2 * 4 * 4 and info["macs"]["in_subgraphs"] == 2 * 4 * 4


def test_custom_domain_op_does_not_break_inference():
    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Mystery", ["h"], ["k"], domain="my.ops"),
             helper.make_node("MatMul", ["k", "w2"], ["y"])]
    w2 = numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "w2")
    model = make_model(nodes, [vi("x", [5, 4])], [vi("y", None)], [w, w2], extra_opsets=[("my.ops", 1)])
    info = inspect_model(model)
    assert info["op_histogram"] == {"MatMul": 2, "my.ops::Mystery": 1}
    assert info["opsets"] == {"ai.onnx": 17, "my.ops": 1}
    assert info["macs"]["by_op_type"] == {"MatMul": 5 * 4 * 3}
    assert info["macs"]["unknown_nodes"] == 1  # the MatMul after the custom op has no shape


def test_opset11_and_external_data(tmp_path):
    model = conv_bn_model(opset=11)
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.onnx.data", size_threshold=0)
    assert (tmp_path / "ext.onnx.data").exists()
    info = inspect_model(path, {"input": (1, 1, 8, 8)})
    assert info["opsets"] == {"ai.onnx": 11} and info["ir_version"] == 8 and info["producer"] == "tests"
    assert info["parameters"]["count"] == 4 * 9 + 4 * 5 + 2560 + 10
    assert info["parameters"]["total_bytes"] == info["parameters"]["count"] * 4
    assert info["macs"]["total"] == 4 * 64 * 9 + 256 * 10


def test_cli_json_and_table(tmp_path, model_path):
    runner = CliRunner()
    result = runner.invoke(main, ["inspect", str(model_path), "--json", "--shape", "input=2x1x8x8"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["macs"]["total"] == 2 * (4 * 64 * 9 + 256 * 10)
    table = runner.invoke(main, ["inspect", str(model_path)])
    assert table.exit_code == 0 and "4.86 k over 2 nodes, per sample (batch axis N = 1)" in table.output


@pytest.mark.parametrize("shape, message", [("input", "--shape expects NAME=1x3x224x224"),
                                            ("other=1x1x8x8", "inputs are: input")])
def test_cli_bad_shape_exits_2(model_path, shape, message):
    result = CliRunner().invoke(main, ["inspect", str(model_path), "--shape", shape])
    assert result.exit_code == 2
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_shape_inference_failure_falls_back_to_declared_shapes(monkeypatch):
    def broken(*args, **kwargs):
        raise onnx.shape_inference.InferenceError("[ShapeInferenceError] simulated")

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", broken)
    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], [vi("x", [5, 4])], [vi("y", None)], [w])
    info = inspect_model(model)
    assert info["shape_inference"] == "failed" and any("shape inference failed" in n for n in info["notes"])
    assert info["macs"]["total"] == 5 * 4 * 3  # operands are declared static, so MACs are still exact
