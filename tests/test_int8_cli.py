"""``graphopt optimize --int8``: end to end through click, and every refusal with its exit code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main

RNG = np.random.default_rng(4)


def _save(tmp_path, nodes, inits, name="m.onnx", in_type=TensorProto.FLOAT):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", in_type, ["N", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _mlp(tmp_path):
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    inits = [numpy_helper.from_array(RNG.standard_normal((8, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(RNG.standard_normal((16, 4)).astype(np.float32), "w2")]
    return _save(tmp_path, nodes, inits)


def _npz(tmp_path, name="calib.npz", n=40, **arrays):
    path = tmp_path / name
    np.savez(path, **(arrays or {"x": RNG.standard_normal((n, 8)).astype(np.float32)}))
    return path


def _invoke(*args):
    return CliRunner().invoke(main, ["optimize", *map(str, args), "--no-cache", "--target", "cpu"])


def test_int8_end_to_end_writes_a_qdq_model(tmp_path):
    model, out = _mlp(tmp_path), tmp_path / "out.onnx"
    result = _invoke(model, "-o", out, "--int8", "--calib-data", _npz(tmp_path), "--calib-method", "entropy",
                     "--eval-data", _npz(tmp_path, "eval.npz"))
    assert result.exit_code == 0, result.output
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops


def test_few_samples_warn(tmp_path):
    result = _invoke(_mlp(tmp_path), "-o", tmp_path / "o.onnx", "--int8", "--calib-data", _npz(tmp_path, n=10))
    assert result.exit_code == 0, result.output
    assert "only 10 calibration samples" in result.output


def test_already_quantized_model_is_refused(tmp_path):
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"], name="dq"),
             helper.make_node("MatMul", ["d", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z"),
             numpy_helper.from_array(RNG.standard_normal((8, 4)).astype(np.float32), "w")]
    result = _invoke(_save(tmp_path, nodes, inits), "--int8", "--calib-data", _npz(tmp_path), "--no-simplify")
    assert result.exit_code == 2 and "already quantized" in result.output


def test_missing_calibration_data_is_refused_unless_calib_random(tmp_path):
    model = _mlp(tmp_path)
    result = _invoke(model, "--int8")
    assert result.exit_code == 2 and "calib" in result.output and "--calib-data" in result.output
    result = _invoke(model, "-o", tmp_path / "r.onnx", "--int8", "--calib-random")
    assert result.exit_code == 0, result.output
    assert "RANDOM" in result.output and (tmp_path / "r.onnx").exists()


@pytest.mark.parametrize("arrays, needle", [
    ({"x": np.zeros((20, 5), np.float32)}, "expects"),
    ({"wrong": np.zeros((20, 8), np.float32)}, "missing input"),
    ({"x": np.full((20, 8), np.nan, np.float32)}, "NaN"),
])
def test_bad_calibration_data_is_refused(tmp_path, arrays, needle):
    result = _invoke(_mlp(tmp_path), "--int8", "--calib-data", _npz(tmp_path, **arrays))
    assert result.exit_code == 2 and needle in result.output, result.output


def test_model_without_float_weights_is_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Slice", ["r", "st", "en", "ax"], ["y"], name="slice")]
    inits = [numpy_helper.from_array(np.array([0], np.int64), n) for n in ("st", "ax")]
    inits.append(numpy_helper.from_array(np.array([4], np.int64), "en"))
    result = _invoke(_save(tmp_path, nodes, inits), "--int8", "--calib-data", _npz(tmp_path), "--no-simplify")
    assert result.exit_code == 2 and "no float weights" in result.output


def test_int8_flags_without_int8_and_unknown_exclusions_are_usage_errors(tmp_path):
    model = _mlp(tmp_path)
    result = _invoke(model, "--calib-method", "entropy")
    assert result.exit_code == 2 and "add --int8" in result.output
    result = _invoke(model, "--int8", "--calib-data", _npz(tmp_path), "--exclude-nodes", "nope")
    assert result.exit_code == 2 and "'nope'" in result.output


def test_budget_missed_exits_1_and_keep_best_writes(tmp_path):
    model = _mlp(tmp_path)
    config = tmp_path / "p.yaml"
    config.write_text("passes:\n  - int8:\n      max_float_layers: 0\n      calib_random: true\n      keep_best: true\n")
    out = tmp_path / "best.onnx"
    # random calibration on inputs 100× larger than the evaluation data: the budget of 0 points is missed
    eval_path = _npz(tmp_path, "eval.npz", x=(RNG.standard_normal((64, 8)) * 100).astype(np.float32))
    result = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out), "--config", str(config), "--no-cache",
                                       "--target", "cpu", "--eval-data", str(eval_path), "--max-accuracy-drop", "0"])
    assert result.exit_code == 1, result.output
    assert "best model written" in result.output and out.exists()
    config.write_text("passes:\n  - int8:\n      max_float_layers: 0\n      calib_random: true\n")
    out.unlink()
    result = CliRunner().invoke(main, ["optimize", str(model), "-o", str(out), "--config", str(config), "--no-cache",
                                       "--target", "cpu", "--eval-data", str(eval_path), "--max-accuracy-drop", "0"])
    assert result.exit_code == 1 and "no output written" in result.output and not out.exists()


def test_metric_flag_judges_the_budget_and_needs_labels_for_accuracy(tmp_path):
    """``y`` (N, 4) has no class-score name and no labels: auto judges it by cosine, ``--metric agreement``
    by top-1 agreement, and that is what the report and the fallback's budget then use."""
    import json

    model, out, report = _mlp(tmp_path), tmp_path / "out.onnx", tmp_path / "r.json"
    eval_path = _npz(tmp_path, "eval.npz")
    result = _invoke(model, "-o", out, "--int8", "--calib-data", _npz(tmp_path), "--eval-data", eval_path,
                     "--metric", "agreement", "--max-accuracy-drop", "50", "--report", report)
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["metric"] == "agreement" and data["metrics_before"]["y"]["kind"] == "top1-agreement"
    result = _invoke(model, "-o", out, "--int8", "--calib-data", _npz(tmp_path), "--eval-data", eval_path,
                     "--metric", "accuracy")
    assert result.exit_code == 2 and "needs labels" in result.output
    assert result.output.strip().splitlines()[-1].startswith("error: metric 'accuracy' needs labels")
