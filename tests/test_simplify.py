"""simplify: folds BatchNorm, removes Identity and dead nodes, keeps outputs identical."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from graphopt.api import optimize
from tests.conftest import conv_bn_model, save_data


def outputs(model: onnx.ModelProto, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_simplify_matches_onnxruntime_on_original(tmp_path, model_path):
    eval_path = save_data(tmp_path / "eval.npz")
    result = optimize(model_path, tmp_path / "out.onnx", eval_data=eval_path, target="cpu")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "out.onnx")).graph.node]
    assert "BatchNormalization" not in ops and "Identity" not in ops
    row = result.report.rows[0]
    assert row.status == "applied" and row.stats["nodes_removed"] >= 2
    feeds = {"input": np.random.default_rng(3).random((5, 1, 8, 8), dtype=np.float32)}
    np.testing.assert_allclose(outputs(onnx.load(str(tmp_path / "out.onnx")), feeds)[0],
                               outputs(conv_bn_model(), feeds)[0], rtol=1e-4, atol=1e-5)


def test_simplify_removes_dead_branches_and_folds_constants(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Add", ["x", "one"], ["y"]),
         helper.make_node("Mul", ["x", "two"], ["dead"]),
         helper.make_node("Add", ["one", "one"], ["two_again"]),
         helper.make_node("Mul", ["y", "two_again"], ["z"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = optimize(model, tmp_path / "o.onnx", target="cpu")
    simplified = onnx.load(str(tmp_path / "o.onnx"))
    assert [n.op_type for n in simplified.graph.node] == ["Add", "Mul"]
    assert "two" not in {i.name for i in simplified.graph.initializer}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(outputs(simplified, {"x": x})[0], (x + 1) * 2)
    assert result.report.rows[0].stats["nodes_removed"] == 3


def test_already_simple_model_is_unchanged(tmp_path):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    result = optimize(model, target="cpu")
    assert result.report.rows[0].status == "unchanged"


def test_erf_gelu_before_a_conv_stays_fusable_by_onnxruntime(tmp_path):
    """Conv → x·(1+erf(x/√2))·0.5 → Conv: simplify must not fold the ×0.5 into the second Conv,
    or onnxruntime no longer fuses the GELU (PP-OCRv6 rec ran 1.27× slower)."""
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.3, "w2"),
             numpy_helper.from_array(np.array(1.4142135, np.float32), "sqrt2"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Div", ["c", "sqrt2"], ["d"]), helper.make_node("Erf", ["d"], ["e"]),
             helper.make_node("Add", ["e", "one"], ["a"]), helper.make_node("Mul", ["c", "a"], ["m"]),
             helper.make_node("Mul", ["m", "half"], ["g"]), helper.make_node("Conv", ["g", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source, out = tmp_path / "gelu.onnx", tmp_path / "gelu.opt.onnx"
    onnx.save(model, source)
    optimize(source, out, cache=False)
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    ort.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])
    assert "Gelu" in {n.op_type for n in onnx.load(tmp_path / "ort.onnx").graph.node}
