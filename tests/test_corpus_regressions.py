"""One test per class of failure the model corpus (tools/corpus.py) found, on the corpus model that showed
it, judged as the corpus judges (valid within tolerance of onnx's expected outputs, or refused in one line),
plus unit tests of the fixes that are not specific to one model."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt.data import DataSet, InputSpec
from graphopt.validate import validate_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import corpus  # noqa: E402

CASES = [
    # (corpus model, pass, expected status, what the refusal names)
    # empty outputs (a Shape whose start > end) crashed the comparison: internal error
    ("test_shape_start_greater_than_end", "simplify", "valid", None),
    ("test_shape_start_greater_than_end", "int8", "refused", "no float weights"),
    # onnx's strict check rejects MeanVarianceNormalization's own function body (the original's too):
    # simplify's result was judged invalid; fp16 cannot prove a converted one, so it stays fp32
    ("test_mvn", "simplify", "valid", None),
    ("test_mvn", "fp16", "valid", None),
    # fp16 wrote sequence models onnxruntime cannot load (the converter retypes sequences inconsistently):
    # sequence ops stay fp32, and a model of nothing else stays as it is
    ("simple/test_sequence_model4", "fp16", "valid", None),
    ("simple/test_sequence_model1", "fp16", "valid", None),
    # a quantizer written in float: fp16 before Round moved integers by one
    ("test_dynamicquantizelinear_expanded", "fp16", "valid", None),
    # BitCast's input width is its meaning
    ("test_bitcast_float32_to_int32", "fp16", "valid", None),
    # a model that takes exactly 10000 rows got 64-row self-check feeds
    ("test_mish", "fp16", "valid", None),
    # a fixed batch of 4: smoothquant's observation fed 8 rows (graph input's shape cleared)
    ("pytorch-converted/test_Linear_no_bias", "int8", "valid", None),
    # IR 3 (initializers are graph inputs): simplify wrote initializers that are not inputs; upgrades failed
    ("pytorch-converted/test_Conv1d", "simplify", "valid", None),
    ("pytorch-converted/test_Conv2d_dilated", "int8", "valid", None),
    ("pytorch-converted/test_Conv2d_dilated", "fp16", "valid", None),
    # BatchNormalization(6): no onnxruntime kernel at its opset; upgraded with is_test dropped
    ("pytorch-converted/test_BatchNorm2d_eval", "simplify", "valid", None),
    ("pytorch-converted/test_BatchNorm2d_eval", "fp16", "valid", None),
    # ai.onnx.ml only, default opset 1: the converter refused the ml op; only the import needs raising
    ("test_ai_onnx_ml_binarizer", "fp16", "valid", None),
]


@pytest.fixture(scope="module")
def entries():
    return {e.name: e for e in corpus.load_entries(only="|".join(sorted({c[0] for c in CASES})))}


@pytest.mark.parametrize(("name", "pass_name", "status", "names"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_corpus_model(entries, name, pass_name, status, names):
    run = corpus.run_one(entries[name], pass_name)
    assert run.status == status, (run.reason, run.detail)
    if names:
        assert names in run.reason and "\n" not in run.reason


def _model_with_value_type(elem_type: int) -> ir.Model:
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node("Neg", ["r"], ["y"], name="neg")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              value_info=[helper.make_tensor_value_info("r", elem_type, [2])])
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_validation_fails_a_model_onnxruntime_rejects_even_for_a_gpu_target():
    """Only a missing kernel is a note on a machine that is not the target; a malformed model is invalid."""
    proto = ir.to_proto(_model_with_value_type(TensorProto.FLOAT))
    proto.graph.value_info[0].type.tensor_type.elem_type = 0  # what the fp16 converter wrote for a sequence
    result = validate_model(ir.from_proto(proto), require_runtime=False)
    assert not result.ok and "onnxruntime" in result.problem


def test_take_keeps_whole_feeds_of_a_fixed_batch():
    data = DataSet({"x": np.zeros((12, 10), np.float32)}).check_against(
        [InputSpec("x", np.dtype(np.float32), (4, 10))], "evaluation")
    assert data.fixed_batch == 4
    assert len(data.take(2)) == 4 and len(data.take(5)) == 8 and len(data.take(64)) == 12
    assert len(DataSet({"x": np.zeros((12, 10), np.float32)}).take(5)) == 5


def test_softmax_of_large_numbers_written_out_is_valid_without_data():
    """``x − max(x)`` at |x| ≈ 10⁴: fp16 rounds x to multiples of 8 first; the probe inputs (|x| ≈ 1) never
    show it, so the subtraction stays fp32 whatever the data (a FAILURE of ``corpus.py --probe-inputs``)."""
    entry = corpus.load_entries(only="^test_softmax_large_number_expanded$")[0]
    run = corpus.run_one(entry, "fp16", eval_data=False)
    assert run.status == "valid", (run.reason, run.detail)


def test_rounding_cone_stays_fp32():
    from graphopt.passes.fp16.blocklist import rounding_cone

    nodes = [helper.make_node("Relu", ["x"], ["a"], name="early"),
             helper.make_node("Div", ["a", "s"], ["b"], name="scale"),
             helper.make_node("Round", ["b"], ["c"], name="round"),
             helper.make_node("Mul", ["c", "s"], ["y"], name="after"),
             helper.make_node("Exp", ["x"], ["z"], name="elsewhere")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4]),
                               helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
                              [onnx.numpy_helper.from_array(np.array(0.1, np.float32), "s")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert sorted(rounding_cone(proto)) == ["early", "round", "scale"]


def test_fp16_refuses_sequences_mixed_with_float_compute_in_one_line(tmp_path):
    from click.testing import CliRunner

    from graphopt.cli import main

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("SequenceConstruct", ["r", "x"], ["seq"], name="make_seq"),
             helper.make_node("ConcatFromSequence", ["seq"], ["y"], name="concat", axis=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])])
    path, out = tmp_path / "seq.onnx", tmp_path / "out.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(out), "--no-cache", "--fp16",
                                       "--target", "cuda"])
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code in (1, 2) and len(errors) == 1, result.stderr
    assert "node 'make_seq' (SequenceConstruct)" in errors[0]
    assert not out.exists()
