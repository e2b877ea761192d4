"""int8 pass numerics on tiny inline graphs, compared with onnxruntime on the float original."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.pipeline import Pipeline
from graphopt.verify import mean_cosine

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, initializers, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _w(name, *shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def conv_residual_gemm(batch="N"):
    """Conv-Relu-Conv + residual Add, GlobalAveragePool, Flatten, Gemm (dynamic batch)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "r1"], ["a"], name="residual"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wg", "bg"], ["y"], name="fc", transB=1),
    ]
    inits = [_w("w1", 8, 3, 3, 3), _w("b1", 8, scale=0.1), _w("w2", 8, 8, 3, 3, scale=0.15),
             _w("b2", 8, scale=0.1), _w("wg", 10, 8), _w("bg", 10, scale=0.1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 10])], inits)


def mlp_matmul():
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2"),
    ]
    inits = [_w("w1", 16, 32), _w("b1", 32, scale=0.1), _w("w2", 32, 4)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)


def _run(model, feeds):
    return ort_engine.build(model).run(feeds)


def _optimize(model, calib, **kwargs):
    options = Int8Options(**kwargs.pop("options", {}))
    return graphopt.optimize(model, passes=[Int8Pass(options)], calib_data=calib, target="cpu", cache=False, **kwargs)


def _ops(model):
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load_from_string(
        graphopt.model_io.to_proto(model).SerializeToString())
    return [n.op_type for n in proto.graph.node]


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_conv_residual_gemm_matches_float(method):
    model = conv_residual_gemm()
    x = RNG.standard_normal((64, 3, 8, 8)).astype(np.float32)
    result = _optimize(model, DataSet({"x": x}), options={"calib_method": method})
    ops = _ops(result.model)
    assert ops.count("QuantizeLinear") >= 3 and "DequantizeLinear" in ops
    ref = _run(model, {"x": x[:16]})["y"]
    out = _run(result.model, {"x": x[:16]})["y"]
    assert mean_cosine(ref, out) > 0.99
    assert np.mean(ref.argmax(1) == out.argmax(1)) >= 0.8
    assert result.report.rows[-1].stats["calib_method"] == method


def test_residual_add_quantized_but_bias_add_not():
    calib = DataSet({"x": RNG.standard_normal((40, 16)).astype(np.float32)})
    result = _optimize(mlp_matmul(), calib, options={"batched_gemm": False})
    proto = graphopt.model_io.to_proto(result.model)
    names = {n.name: n for n in proto.graph.node}
    assert "bias1" in names and not any(i.endswith("_DequantizeLinear_Output") for i in names["bias1"].input[1:])
    # by default (cpu) the pair is one Gemm, named as the MatMul, whose bias is quantized like a Gemm's (int32)
    batched = graphopt.model_io.to_proto(_optimize(mlp_matmul(), calib).model)
    nodes = {n.name: n for n in batched.graph.node}
    assert nodes["mm1"].op_type == "Gemm" and "bias1" not in nodes
    bias_dq = next(n for n in batched.graph.node if n.output[0] == nodes["mm1"].input[2])
    stored = next(i for i in batched.graph.initializer if i.name == bias_dq.input[0])
    assert bias_dq.op_type == "DequantizeLinear" and stored.data_type == TensorProto.INT32
    conv = conv_residual_gemm()
    res = _optimize(conv, DataSet({"x": RNG.standard_normal((40, 3, 8, 8)).astype(np.float32)}))
    add = next(n for n in graphopt.model_io.to_proto(res.model).graph.node if n.op_type == "Add")
    producers = {o: n.op_type for n in graphopt.model_io.to_proto(res.model).graph.node for o in n.output}
    assert all(producers.get(i) == "DequantizeLinear" for i in add.input)


def test_matmul_model_dynamic_batch_runs_any_batch():
    model = mlp_matmul()
    x = RNG.standard_normal((50, 16)).astype(np.float32)
    result = _optimize(model, DataSet({"x": x}), options={"calib_batch_size": 7})
    for batch in (1, 3, 50):
        ref = _run(model, {"x": x[:batch]})["y"]
        out = _run(result.model, {"x": x[:batch]})["y"]
        assert out.shape == ref.shape
        assert mean_cosine(ref, out) > 0.99


def test_weights_in_constant_nodes_and_opset11_are_quantized():
    nodes = [
        helper.make_node("Constant", [], ["w"], value=_w("wc", 16, 8)),
        helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
    ]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])], [], opset=11)
    x = RNG.standard_normal((40, 16)).astype(np.float32)
    result = _optimize(model, DataSet({"x": x}))
    proto = graphopt.model_io.to_proto(result.model)
    assert proto.opset_import[0].version >= 13
    assert any(n.op_type == "DequantizeLinear" and n.input[0].startswith("w") for n in proto.graph.node)
    assert any("opset upgraded" in note for note in result.report.rows[-1].notes)
    assert mean_cosine(_run(model, {"x": x})["y"], _run(result.model, {"x": x})["y"]) > 0.995


def test_transformer_block_keeps_layernorm_and_softmax_in_float():
    d, vocab = 16, 50
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["e"], name="embed"),
        helper.make_node("MatMul", ["e", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["e", "wk"], ["k"], name="k"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "e"], ["ctx"], name="ctx"),
        helper.make_node("Add", ["ctx", "e"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], name="ln", axis=-1),
    ]
    inits = [_w("emb", vocab, d, scale=1.0), _w("wq", d, d), _w("wk", d, d),
             numpy_helper.from_array(np.ones(d, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(d, np.float32), "beta")]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "S", d])], inits)
    ids = RNG.integers(0, vocab, (48, 12)).astype(np.int64)
    result = _optimize(model, DataSet({"ids": ids}))
    proto = graphopt.model_io.to_proto(result.model)
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    ln = next(n for n in proto.graph.node if n.op_type == "LayerNormalization")
    assert producers[softmax.input[0]].op_type == "MatMul"  # Softmax itself runs in float
    assert producers[ln.input[0]].op_type != "DequantizeLinear"
    assert sum(1 for n in proto.graph.node if n.op_type == "MatMul") == 4
    mm_inputs = [producers[n.input[1]].op_type for n in proto.graph.node if n.op_type == "MatMul" and n.input[1] in producers]
    assert "DequantizeLinear" in mm_inputs
    ref = _run(model, {"ids": ids[:8]})["y"]
    out = _run(result.model, {"ids": ids[:8]})["y"]
    assert mean_cosine(ref, out) > 0.98
    # short and long sequences run: the sequence dimension stayed dynamic
    assert _run(result.model, {"ids": ids[:2, :3]})["y"].shape == (2, 3, d)


def test_exclusions_keep_nodes_in_float():
    model = conv_residual_gemm()
    x = RNG.standard_normal((32, 3, 8, 8)).astype(np.float32)
    result = _optimize(model, DataSet({"x": x}), options={"exclude_nodes": ("conv2",), "exclude_op_types": ("Gemm",)})
    proto = graphopt.model_io.to_proto(result.model)
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    node = {n.name: n for n in proto.graph.node}
    assert producers.get(node["conv1"].input[1]) == "DequantizeLinear"
    assert producers.get(node["conv2"].input[1]) != "DequantizeLinear"
    assert producers.get(node["fc"].input[1]) != "DequantizeLinear"


def test_pipeline_file_key_builds_the_same_pass(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("target: cpu\npasses:\n  - int8:\n      calib_method: entropy\n      exclude_op_types: [Gemm]\n")
    pipeline = Pipeline.from_file(path)
    assert pipeline.passes == [Int8Pass(Int8Options(calib_method="entropy", exclude_op_types=("Gemm",)))]


def test_trt_target_writes_symmetric_int8_qdq_on_weighted_inputs_only():
    model = conv_residual_gemm()
    x = RNG.standard_normal((32, 3, 8, 8)).astype(np.float32)
    result = graphopt.optimize(model, passes=[Int8Pass()], calib_data=DataSet({"x": x}), target="trt", cache=False)
    proto = graphopt.model_io.to_proto(result.model)
    inits = {i.name: i for i in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "QuantizeLinear":
            assert inits[n.input[2]].data_type == TensorProto.INT8
            assert not numpy_helper.to_array(inits[n.input[2]]).any()
    producers = {o: n.op_type for n in proto.graph.node for o in n.output}
    relu = next(n for n in proto.graph.node if n.name == "relu1")
    assert producers[relu.input[0]] == "Conv"  # no Q/DQ on Conv outputs
    assert result.report.rows[-1].stats["trt_check"] == "ok"


def test_large_embedding_table_stored_in_8_bits_small_one_stays_float():
    """A Gather on a ≥ 1 MiB constant table read only by float ops (Add → LayerNorm) is quantized
    (8-bit table, onnxruntime gathers 8-bit rows); a small table is left in float."""
    nodes = [
        helper.make_node("Gather", ["big", "ids"], ["e"], name="word_emb"),
        helper.make_node("Gather", ["small", "ids"], ["p"], name="pos_emb"),
        helper.make_node("Add", ["e", "p"], ["s"], name="sum"),
        helper.make_node("LayerNormalization", ["s", "gamma", "beta"], ["n"], name="ln", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["y"], name="proj"),
    ]
    inits = [_w("big", 1024, 300, scale=0.05), _w("small", 64, 300, scale=0.05),
             numpy_helper.from_array(np.ones(300, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(300, np.float32), "beta"), _w("w", 300, 16, scale=0.1)]
    model = _model(nodes, [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 12])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12, 16])], inits)
    ids = RNG.integers(0, 64, (48, 12)).astype(np.int64)
    quantized = ir.to_proto(_optimize(model, DataSet({"ids": ids[:40]})).model)
    tables = {i.name: i.data_type for i in quantized.graph.initializer}
    assert "big" not in tables and tables.get("small") == TensorProto.FLOAT
    producers = {o: n for n in quantized.graph.node for o in n.output}
    lookup = next(n for n in quantized.graph.node if n.name == "word_emb")
    table_dq = producers[lookup.input[0]]
    assert table_dq.op_type == "DequantizeLinear" and tables[table_dq.input[0]] in (TensorProto.UINT8, TensorProto.INT8)
    reference = _run(model, {"ids": ids[40:]})["y"]
    assert mean_cosine(reference, _run(quantized, {"ids": ids[40:]})["y"]) > 0.999


def test_int8_shortcut_builds_the_same_model_as_the_pass_list(tmp_path):
    """``optimize(model, int8=Int8Options(...), calib=..., target=...)`` (the issue's API form) runs
    simplify then int8, exactly as ``passes=[SimplifyPass(), Int8Pass(...)]`` and the ``--int8`` flag do."""
    from graphopt.errors import InputError
    from graphopt.model_io import file_hash
    from graphopt.passes.simplify import SimplifyPass

    model = conv_residual_gemm()
    calib = DataSet({"x": RNG.standard_normal((40, 3, 8, 8)).astype(np.float32)})
    short, explicit = tmp_path / "short.onnx", tmp_path / "explicit.onnx"
    graphopt.optimize(model, short, int8=Int8Options(calib_method="minmax"), calib=calib, target="cpu", cache=False)
    graphopt.optimize(model, explicit, passes=[SimplifyPass(), Int8Pass(Int8Options(calib_method="minmax"))],
                      calib_data=calib, target="cpu", cache=False)
    assert file_hash(short) == file_hash(explicit)
    with pytest.raises(InputError, match="one of passes, pipeline or the int8=/fp16= shortcuts"):
        graphopt.optimize(model, int8=True, passes=[SimplifyPass()], calib=calib, target="cpu")
    with pytest.raises(InputError, match="int8= takes Int8Options"):
        graphopt.optimize(model, int8={"calib_method": "minmax"}, calib=calib, target="cpu")
