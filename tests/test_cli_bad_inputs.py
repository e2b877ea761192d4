"""Every bad input: exit code, one-line message, input untouched, no partial output."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from graphopt.cli import main
from tests.conftest import save_data


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def error_line(result) -> str:
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("error:", "interrupted", "internal error"))]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix in (".tmp", ".probe"))


def test_missing_model_file(tmp_path):
    result = run("optimize", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "out.onnx"))
    assert result.exit_code == 2
    assert "model file not found" in error_line(result)
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("content, message", [
    (b"", "model file is empty"),
    (b"this is not an onnx model at all\n" * 10, "not a valid ONNX file"),
])
def test_empty_and_junk_files(tmp_path, content, message):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    result = run("optimize", str(bad), "-o", str(tmp_path / "out.onnx"))
    assert result.exit_code == 2
    assert message in error_line(result)
    assert bad.read_bytes() == content
    assert not (tmp_path / "out.onnx").exists()


def test_truncated_model(tmp_path, model_path):
    data = model_path.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    result = run("optimize", str(truncated), "-o", str(tmp_path / "out.onnx"))
    assert result.exit_code == 2
    assert "not a valid ONNX file" in error_line(result)
    assert not (tmp_path / "out.onnx").exists()


def test_output_equals_input(model_path):
    before = digest(model_path)
    result = run("optimize", str(model_path), "-o", str(model_path))
    assert result.exit_code == 2
    assert "refusing to overwrite" in error_line(result)
    assert digest(model_path) == before


def test_output_equals_input_through_another_spelling(model_path):
    before = digest(model_path)
    other = model_path.parent / "." / model_path.name
    result = run("optimize", str(model_path), "-o", str(other))
    assert result.exit_code == 2
    assert digest(model_path) == before


def test_output_folder_missing(model_path, tmp_path):
    result = run("optimize", str(model_path), "-o", str(tmp_path / "missing" / "out.onnx"))
    assert result.exit_code == 2
    assert "output folder does not exist" in error_line(result)


def test_output_folder_not_writable(model_path):
    # /proc refuses new files even to root, which permission bits would not.
    result = run("optimize", str(model_path), "-o", "/proc/graphopt-out.onnx")
    assert result.exit_code == 2
    assert "not writable" in error_line(result)


@pytest.mark.parametrize("overrides, message", [
    ({"x": np.zeros((4, 1, 8, 8), np.float32)}, "unknown key(s) 'x'"),
    ({"input": np.zeros((4, 3, 8, 8), np.float32)}, "of shape (4, 3, 8, 8) but the model expects (N, 1, 8, 8)"),
    ({"input": np.zeros((4, 8, 8), np.float32)}, "of shape (4, 8, 8) but the model expects (N, 1, 8, 8)"),
    ({"input": np.zeros((4, 1, 8, 8), np.float64)}, "of dtype float64 but the model expects float32"),
    ({"input": np.full((4, 1, 8, 8), np.nan, np.float32)}, "NaN/Inf"),
])
def test_bad_eval_data(tmp_path, model_path, overrides, message):
    data = tmp_path / "data.npz"
    arrays = {"input": np.zeros((4, 1, 8, 8), np.float32), **overrides}
    if "x" in overrides:
        arrays.pop("input")
    np.savez(data, **arrays)
    out = tmp_path / "out.onnx"
    for flag in ("--eval-data", "--calib-data"):
        result = run("optimize", str(model_path), "-o", str(out), flag, str(data), "--target", "cpu")
        assert result.exit_code == 2
        assert message in error_line(result)
        assert not out.exists()


def test_missing_input_in_data_names_the_input(tmp_path, model_path):
    data = tmp_path / "data.npz"
    np.savez(data, labels=np.zeros(3, np.int64), other=np.zeros((3, 2), np.float32))
    result = run("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--eval-data", str(data))
    assert result.exit_code == 2
    assert "missing input(s) 'input'" in error_line(result)


def test_unreadable_data_file(tmp_path, model_path):
    data = tmp_path / "data.npz"
    data.write_text("not npz")
    result = run("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--eval-data", str(data))
    assert result.exit_code == 2
    assert "cannot read data file" in error_line(result)


def test_custom_domain_ops_clear_message_and_other_work_done(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["a"], name="id"),
         helper.make_node("MyOp", ["a"], ["y"], name="custom", domain="com.acme")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, str(path))
    out = tmp_path / "out.onnx"
    result = run("optimize", str(path), "-o", str(out), "--target", "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert "com.acme" in result.output  # the report says why outputs were not compared / onnxsim skipped
    optimized = onnx.load(str(out))
    assert [n.op_type for n in optimized.graph.node] == ["MyOp"]  # the Identity was still removed


def test_ctrl_c_during_save_leaves_nothing(tmp_path, model_path, monkeypatch):
    import graphopt.model_io as model_io

    def interrupted(_fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_io.os, "fsync", interrupted)
    before = digest(model_path)
    out = tmp_path / "out.onnx"
    result = run("optimize", str(model_path), "-o", str(out), "--target", "cpu")
    assert result.exit_code == 130
    assert "interrupted" in error_line(result)
    assert not out.exists()
    assert leftovers(tmp_path) == []
    assert digest(model_path) == before


def test_bad_pipeline_file(tmp_path, model_path):
    config = tmp_path / "pipe.yaml"
    config.write_text("passes:\n  - simplify:\n      no_such_option: 1\n")
    result = run("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--config", str(config))
    assert result.exit_code == 2
    assert "unknown option(s) ['no_such_option']" in error_line(result)


def test_unknown_pass_in_pipeline_file(tmp_path, model_path):
    config = tmp_path / "pipe.json"
    config.write_text('{"passes": ["frobnicate"]}')
    result = run("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--config", str(config))
    assert result.exit_code == 2
    assert "unknown pass 'frobnicate'" in error_line(result)


def test_negative_budget_is_refused(tmp_path, model_path):
    result = run("optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--max-accuracy-drop", "-1",
                 "--target", "cpu")
    assert result.exit_code == 2
    assert "must be ≥ 0" in error_line(result)


def test_debug_shows_traceback(tmp_path):
    with pytest.raises(Exception, match="model file not found"):
        CliRunner().invoke(main, ["--debug", "optimize", str(tmp_path / "nope.onnx")], catch_exceptions=False)


def test_good_run_writes_default_output(tmp_path, model_path):
    eval_path = save_data(tmp_path / "eval.npz")
    result = run("optimize", str(model_path), "--eval-data", eval_path, "--target", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "model.opt.onnx").exists()
    assert leftovers(tmp_path) == []
