"""The fp16 / bf16 pass on tiny inline graphs: overflow kept fp32, Resize, If, I/O types, old models."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.errors import PreconditionFailed, QualityGateError
from graphopt.pass_base import PassContext
from graphopt.passes.fp16 import Fp16Options, Fp16Pass
from graphopt.passes.fp16.typecheck import check_types, elem_types
from graphopt.target import Target

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def make_model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_ort(proto: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def convert(proto, target="cuda", calib=None, eval_=None, **options):
    p = Fp16Pass(Fp16Options(**options)).bind(PassContext(Target(target), calib=calib, eval=eval_))
    result = p(ir.from_proto(proto))
    return result, ir.to_proto(result.model)


def input_types_of(proto: onnx.ModelProto, op_type: str) -> list[int]:
    types = elem_types(proto)
    node = next(n for n in proto.graph.node if n.op_type == op_type)
    return [types.get(i) for i in node.input if i]


def reduce_sum_model() -> onnx.ModelProto:
    """x (N,4096) → Abs → Mul 40 → ReduceSum(axis 1) → Div 4096: the sum reaches ~1.3e5 > 65504."""
    inits = [numpy_helper.from_array(np.array(40.0, np.float32), "k"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array(4096.0, np.float32), "n")]
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="abs"),
             helper.make_node("Mul", ["a", "k"], ["m"], name="scale"),
             helper.make_node("ReduceSum", ["m", "axes"], ["s"], name="sum"),
             helper.make_node("Div", ["s", "n"], ["y"], name="mean")]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4096])],
                      [helper.make_tensor_value_info("y", F, ["N", 1])], inits)


def softmax_model() -> onnx.ModelProto:
    """x (N,16) → MatMul (weights ×10000) → Softmax: logits far beyond 65504."""
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((16, 8)) * 10000).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["logits"], name="mm"),
             helper.make_node("Softmax", ["logits"], ["p"], name="softmax", axis=-1)]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 16])],
                      [helper.make_tensor_value_info("p", F, ["N", 8])], [numpy_helper.from_array(w, "w")])


def mlp_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    w1 = (rng.standard_normal((8, 16)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((16, 4)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 8])],
                      [helper.make_tensor_value_info("y", F, ["N", 4])],
                      [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def data(proto, n=16, seed=0, scale=1.0) -> DataSet:
    rng = np.random.default_rng(seed)
    x = proto.graph.input[0]
    shape = [n] + [d.dim_value for d in x.type.tensor_type.shape.dim[1:]]
    return DataSet({x.name: (rng.standard_normal(shape) * scale).astype(np.float32)})


def test_large_reduce_sum_stays_fp32_with_calibration_data():
    proto = reduce_sum_model()
    calib = data(proto)
    result, out = convert(proto, calib=calib, default_block_list=False)
    assert result.modified
    assert input_types_of(out, "ReduceSum")[0] == F  # the overflowing sum runs in fp32
    assert input_types_of(out, "Abs")[0] == H  # the rest is fp16
    got = run_ort(out, calib.inputs)[0]
    ref = run_ort(proto, calib.inputs)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, rtol=1e-2)
    assert "range >" in result.stats["kept_fp32_because"]


def test_overflow_without_data_is_repaired_by_the_self_check():
    proto = reduce_sum_model()
    result, out = convert(proto, default_block_list=False)  # no data, no default list: must self-repair
    assert input_types_of(out, "ReduceSum")[0] == F
    assert "self-check data" in result.stats["kept_fp32_because"] or "range" in result.stats["kept_fp32_because"]
    feeds = data(proto, seed=3).inputs
    assert np.isfinite(run_ort(out, feeds)[0]).all()


def test_default_block_list_without_data_keeps_reduce_sum_and_warns():
    result, out = convert(reduce_sum_model())
    assert input_types_of(out, "ReduceSum")[0] == F
    assert any("no data" in note for note in result.notes)


def test_softmax_of_large_logits_comes_out_finite():
    proto = softmax_model()
    evaluation = data(proto)
    result, out = convert(proto, eval_=evaluation)
    assert input_types_of(out, "Softmax")[0] == F
    assert input_types_of(out, "MatMul")[0] == F  # its output (the logits) exceeds fp16's range
    got, ref = run_ort(out, evaluation.inputs)[0], run_ort(proto, evaluation.inputs)[0]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_failure_without_repairs_names_the_first_non_finite_tensor():
    with pytest.raises(QualityGateError, match="tensor 'logits'.*MatMul 'mm'"):
        convert(softmax_model(), default_block_list=False, max_repairs=0)


def test_rollback_on_failure_returns_the_input_unchanged():
    proto = softmax_model()
    result, out = convert(proto, default_block_list=False, max_repairs=0, on_failure="rollback")
    assert not result.modified
    assert any(note.startswith("rolled back") for note in result.notes)
    assert all(i.data_type == F for i in out.graph.initializer)


def test_resize_with_scales_keeps_scales_fp32():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["y"], name="resize", mode="linear")]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 3, 8, 8])],
                       [helper.make_tensor_value_info("y", F, ["N", 4, 16, 16])], inits)
    evaluation = data(proto, n=4)
    result, out = convert(proto, eval_=evaluation)
    types = input_types_of(out, "Resize")
    assert types[0] == H and types[-1] == F
    assert check_types(out) == []
    np.testing.assert_allclose(run_ort(out, evaluation.inputs)[0], run_ort(proto, evaluation.inputs)[0], atol=0.05)


def test_if_subgraph_is_converted_consistently():
    then_g = helper.make_graph([helper.make_node("Mul", ["x", "k"], ["t"], name="then_mul")], "then", [],
                               [helper.make_tensor_value_info("t", F, None)])
    else_g = helper.make_graph([helper.make_node("Add", ["x", "k"], ["e"], name="else_add")], "else", [],
                               [helper.make_tensor_value_info("e", F, None)])
    nodes = [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    proto = make_model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4]),
                               helper.make_tensor_value_info("cond", TensorProto.BOOL, [1])],
                       [helper.make_tensor_value_info("y", F, ["N", 4])],
                       [numpy_helper.from_array(np.full(4, 3.0, np.float32), "k")])
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    result, out = convert(proto, eval_=DataSet({"x": x, "cond": np.array([True])}))
    assert result.modified
    assert check_types(out) == []
    branch_types = [o.type.tensor_type.elem_type for a in out.graph.node[1].attribute for o in a.g.output]
    assert out.graph.node[1].op_type == "If" and branch_types == [H, H]
    for cond in (True, False):
        feeds = {"x": x, "cond": np.array([cond])}
        np.testing.assert_allclose(run_ort(out, feeds)[0], run_ort(proto, feeds)[0], rtol=1e-3)


def test_keep_io_types_and_fp16_io():
    proto = mlp_model()
    _, kept = convert(proto)
    assert kept.graph.input[0].type.tensor_type.elem_type == F
    assert kept.graph.output[0].type.tensor_type.elem_type == F
    assert {i.data_type for i in kept.graph.initializer} == {H}
    _, io16 = convert(proto, keep_io_types=False)
    assert io16.graph.input[0].type.tensor_type.elem_type == H
    assert io16.graph.output[0].type.tensor_type.elem_type == H
    assert not any(n.op_type == "Cast" for n in io16.graph.node)
    x = data(proto).inputs["x"]
    np.testing.assert_allclose(run_ort(io16, {"x": x.astype(np.float16)})[0], run_ort(proto, {"x": x})[0], atol=0.02)


def test_bf16_weights_and_finite_outputs():
    proto = mlp_model()
    result, out = convert(proto, precision="bf16")
    assert {i.data_type for i in out.graph.initializer} == {TensorProto.BFLOAT16}
    assert result.stats["precision"] == "bf16" and "finite" in result.stats["self_check"]
    assert check_types(out) == []


def test_cpu_target_warns_and_keeps_ops_without_cpu_kernel_fp32():
    proto = mlp_model()
    result, out = convert(proto, target="cpu")
    assert any("slower on CPUs" in note for note in result.notes)
    # onnxruntime's CPU provider has no fp16 MatMul: it stays fp32 on a CPU target
    assert input_types_of(out, "MatMul")[0] == F


def test_old_model_without_names_and_with_initializers_as_inputs():
    proto = mlp_model()
    for node in proto.graph.node:
        node.name = ""
    proto.graph.input.extend([helper.make_tensor_value_info(i.name, F, list(i.dims)) for i in proto.graph.initializer])
    proto.opset_import[0].version = 11
    result, out = convert(proto)
    names = [n.name for n in out.graph.node]
    assert all(names) and len(names) == len(set(names))
    types = elem_types(out)
    for graph_input in out.graph.input:
        if graph_input.type.tensor_type.elem_type == F:
            consumers = [n for n in out.graph.node if graph_input.name in n.input]
            assert all(n.op_type == "Cast" or types[n.output[0]] == F for n in consumers)
    x = data(proto).inputs["x"]
    np.testing.assert_allclose(run_ort(out, {"x": x})[0], run_ort(mlp_model(), {"x": x})[0], atol=0.02)


def test_already_fp16_model_is_left_alone():
    _, once = convert(mlp_model())
    result, twice = convert(once)
    assert not result.modified
    assert any("already computes in float16" in note for note in result.notes)
    assert twice.graph.node[0].op_type == once.graph.node[0].op_type


def test_model_without_float_tensors_is_refused():
    proto = make_model([helper.make_node("Add", ["a", "b"], ["c"], name="add")],
                       [helper.make_tensor_value_info("a", TensorProto.INT64, [2]),
                        helper.make_tensor_value_info("b", TensorProto.INT64, [2])],
                       [helper.make_tensor_value_info("c", TensorProto.INT64, [2])])
    with pytest.raises(PreconditionFailed, match="no float tensors"):
        convert(proto)


def test_fp16_weights_take_two_bytes_each_on_disk(tmp_path):
    """Weights are packed as raw 16-bit patterns (not protobuf varints): the file halves, values unchanged."""
    from graphopt.passes.fp16 import pack_16bit_initializers

    rng = np.random.default_rng(7)
    weight = rng.standard_normal((256, 256)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
        # float_data, as onnxsim writes folded weights: the converter turns these into int32_data varints
        [helper.make_tensor("w", TensorProto.FLOAT, weight.shape, weight.reshape(-1).tolist())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = graphopt.optimize(model, passes=[Fp16Pass()], target="cuda", cache=False)
    proto = ir.to_proto(result.model)
    (init,) = proto.graph.initializer
    assert init.data_type == TensorProto.FLOAT16 and len(init.raw_data) == weight.size * 2 and not init.int32_data
    np.testing.assert_array_equal(numpy_helper.to_array(init), weight.astype(np.float16))
    assert proto.ByteSize() < weight.nbytes * 0.52

    varint = numpy_helper.from_array(weight.astype(np.float16), "v")
    as_int32 = onnx.TensorProto(name="v", data_type=TensorProto.FLOAT16, dims=list(varint.dims),
                                int32_data=np.frombuffer(varint.raw_data, np.uint16).astype(np.int32).tolist())
    holder = helper.make_model(helper.make_graph([], "h", [], [], [as_int32]))
    assert pack_16bit_initializers(holder) == 1
    np.testing.assert_array_equal(numpy_helper.to_array(holder.graph.initializer[0]), weight.astype(np.float16))


def test_fp16_shortcut_of_optimize_converts_like_the_pass():
    proto = mlp_model()
    result = graphopt.optimize(proto, fp16=Fp16Options(precision="bf16"), target="cuda", cache=False)
    assert [row.name for row in result.report.rows] == ["simplify", "fp16"]
    assert {i.data_type for i in ir.to_proto(result.model).graph.initializer} == {TensorProto.BFLOAT16}
