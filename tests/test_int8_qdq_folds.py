"""Exact folds of the written QDQ graph (issue 12): outlier-split masks dropped, scales after int8 MatMuls folded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8 import Int8Options, Int8Pass
from graphopt.passes.int8.methods import qdq_folds
from graphopt.target import Target
from tests.test_int8_transformer import _init, _model, _spiky, spiky_model

RNG = np.random.default_rng(7)
VNNI = Target("cpu", cpu_vnni=True)
D = 16


def _quantize(model, data, target=VNNI, **options):
    result = graphopt.optimize(model, passes=[Int8Pass(Int8Options(**options))], calib_data=data, target=target,
                               cache=False)
    proto = graphopt.model_io.to_proto(result.model)
    onnx.checker.check_model(proto)
    return result.report.rows[-1].stats, proto


def _folds(stats) -> dict:
    return next(m for m in stats["methods"] if m["method"] == "qdq-folds")


def test_split_masks_are_dropped_and_the_outputs_do_not_move():
    model, calib, test = spiky_model(), _spiky(256), _spiky(64)
    feeds = dict(test.inputs)
    kept_stats, kept = _quantize(model, calib, qdq_folds=False)
    stats, folded = _quantize(model, calib)
    assert "qdq-folds" not in {m["method"] for m in kept_stats["methods"]}
    masks = [n for n in kept.graph.node if n.op_type == "Mul"]
    assert len(masks) == 1  # the split wrote one inlier mask …
    assert _folds(stats)["masks"] == [masks[0].name]
    assert not [n for n in folded.graph.node if n.op_type == "Mul"]  # … which the fold dropped
    quantize = next(n for n in folded.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "z")
    assert quantize is not None  # the layer's Q now reads the unmasked activation (outliers saturate)
    reference = ort_engine.build(kept).run(feeds)["y"]
    np.testing.assert_allclose(ort_engine.build(folded).run(feeds)["y"], reference, rtol=0, atol=1e-5)


def test_a_mask_stays_when_a_masked_weight_row_is_not_zero():
    model, calib = spiky_model(), _spiky(256)
    _, proto = _quantize(model, calib, qdq_folds=False)
    mask = next(n for n in proto.graph.node if n.op_type == "Mul")
    channels = np.flatnonzero(numpy_helper.to_array(
        next(i for i in proto.graph.initializer if i.name in mask.input)) == 0)
    layer = next(n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm") and n.name == "mm")
    dq = next(n for n in proto.graph.node if n.output[0] == layer.input[1])
    weight = next(i for i in proto.graph.initializer if i.name == dq.input[0])
    values = numpy_helper.to_array(weight).copy()
    values[channels[0], 0] = 3  # the row of an outlier channel now reads it: the mask matters
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    assert qdq_folds.fold(proto).masks == ()
    assert any(n.op_type == "Mul" for n in proto.graph.node)


def scaled_attention_model(op: str, constant: float):
    """softmax-free attention scores: ``(x·Wq)·(x·Wk)ᵀ`` then ``op`` by ``constant`` (Mul by 1/√d, or Div by √d)."""
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"], name="proj_q"),
             helper.make_node("MatMul", ["x", "wk"], ["k"], name="proj_k"),
             helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["q", "kt"], ["s"], name="scores"),
             helper.make_node(op, ["s", "c"], ["scaled"], name="scale"),
             helper.make_node("Relu", ["scaled"], ["y"], name="act")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, D])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 4])],
                  [_init("wq", RNG.standard_normal((D, D)) * 0.3), _init("wk", RNG.standard_normal((D, D)) * 0.3),
                   _init("c", constant)])


@pytest.mark.parametrize(("op", "constant"), [("Mul", 0.25), ("Div", 4.0)])
def test_a_scale_after_a_quantized_matmul_goes_into_its_dequantization(op, constant):
    model = scaled_attention_model(op, constant)
    data = DataSet({"x": RNG.standard_normal((64, 4, D)).astype(np.float32)})
    feeds = {"x": RNG.standard_normal((8, 4, D)).astype(np.float32)}
    _, kept = _quantize(model, data, qdq_folds=False)
    stats, folded = _quantize(model, data)
    assert _folds(stats)["scales"] == ["scale"]
    assert "scale" not in {n.name for n in folded.graph.node}
    scores = next(n for n in folded.graph.node if n.name == "scores")
    assert {n.op_type for n in folded.graph.node if n.output[0] in scores.input} == {"DequantizeLinear"}
    reference = ort_engine.build(kept).run(feeds)["y"]
    np.testing.assert_allclose(ort_engine.build(folded).run(feeds)["y"], reference, rtol=1e-5, atol=1e-6)
    fp32 = ort_engine.build(model).run(feeds)["y"]
    assert np.abs(reference - fp32).max() < 0.1 * np.abs(fp32).max()  # the model is quantized, not broken


def test_a_negative_or_float_path_scale_is_left_alone():
    model = scaled_attention_model("Mul", -0.25)
    data = DataSet({"x": RNG.standard_normal((64, 4, D)).astype(np.float32)})
    stats, folded = _quantize(model, data)
    assert _folds(stats)["scales"] == [] and "scale" in {n.name for n in folded.graph.node}
    # without VNNI the scores MatMul stays in float (attention_float): nothing quantized to fold into
    stats, folded = _quantize(scaled_attention_model("Mul", 0.25), data, target=Target("cpu", cpu_vnni=False))
    assert _folds(stats)["scales"] == [] and "scale" in {n.name for n in folded.graph.node}


def test_folds_run_only_on_the_cpu_target():
    model = scaled_attention_model("Mul", 0.25)
    data = DataSet({"x": RNG.standard_normal((64, 4, D)).astype(np.float32)})
    stats, proto = _quantize(model, data, target=Target("trt"))
    assert "qdq-folds" not in {m["method"] for m in stats["methods"]}
    assert "scale" in {n.name for n in proto.graph.node}
