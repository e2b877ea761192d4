"""Pipelines: files and flags build the same passes and the same model; packaging and CLI basics."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.model_io import file_hash
from graphopt.passes.simplify import SimplifyOptions, SimplifyPass
from graphopt.pipeline import Pipeline, make_pass

ROOT = Path(__file__).resolve().parents[1]


def test_pass_from_name_and_mapping():
    assert make_pass("simplify") == SimplifyPass()
    built = make_pass({"simplify": {"fuse_batchnorm": False}})
    assert built.options == SimplifyOptions(fuse_batchnorm=False)


def test_option_types_are_checked():
    with pytest.raises(InputError, match="expected true/false"):
        make_pass({"simplify": {"fuse_batchnorm": "no"}})


def test_pipeline_round_trips_through_dict():
    pipeline = Pipeline([SimplifyPass(SimplifyOptions(use_onnxsim=False))], "cpu", 0.5, "agreement")
    again = Pipeline.from_dict(pipeline.to_dict())
    assert again.passes == pipeline.passes and again.target == "cpu" and again.max_accuracy_drop == 0.5
    assert again.metric == "agreement"
    with pytest.raises(InputError, match="metric must be one of"):
        Pipeline.from_dict({"passes": ["simplify"], "metric": "f1"})


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "target: cpu\npasses:\n  - simplify:\n      eliminate_common_subexpressions: false\n"),
    (".json", '{"target": "cpu", "passes": [{"simplify": {"eliminate_common_subexpressions": false}}]}'),
])
def test_pipeline_file_and_flags_give_the_same_model(tmp_path, model_path, suffix, text):
    config = tmp_path / f"pipe{suffix}"
    config.write_text(text)
    from_file, from_flags = tmp_path / "file.onnx", tmp_path / "flags.onnx"
    runner = CliRunner()
    r1 = runner.invoke(main, ["optimize", str(model_path), "-o", str(from_file), "--config", str(config), "--no-cache"])
    assert r1.exit_code == 0, r1.output
    # The flag spelling of the default simplify pass; the file turned CSE off, so compare against the API too.
    r2 = runner.invoke(main, ["optimize", str(model_path), "-o", str(from_flags), "--simplify", "--target", "cpu",
                              "--no-cache"])
    assert r2.exit_code == 0, r2.output
    from graphopt.api import optimize

    api_out = tmp_path / "api.onnx"
    optimize(model_path, api_out, passes=[SimplifyPass(SimplifyOptions(eliminate_common_subexpressions=False))],
             target="cpu", cache=False)
    assert file_hash(from_file) == file_hash(api_out)
    # this model has no common subexpressions, so the flag default gives the same bytes too
    assert file_hash(from_file) == file_hash(from_flags)


def test_config_and_pass_flags_together_refused(tmp_path, model_path):
    config = tmp_path / "p.yaml"
    config.write_text("passes: [simplify]\n")
    result = CliRunner().invoke(main, ["optimize", str(model_path), "--config", str(config), "--no-simplify"])
    assert result.exit_code == 2
    assert "do not also give pass flags" in result.output


def test_report_json_written(tmp_path, model_path):
    import json

    report = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--report",
                                       str(report), "--target", "cpu"])
    assert result.exit_code == 0, result.output
    data = json.loads(report.read_text())
    assert data["output_path"].endswith("o.onnx") and data["input_hash"] != ""
    assert {"graphopt", "onnx", "onnxruntime"} <= set(data["versions"]) or "onnxruntime-gpu" in data["versions"]
    assert data["rows"][0]["name"] == "simplify" and data["target"]["kind"] == "cpu"


def test_help_does_not_import_torch_or_tensorrt():
    code = ("import sys; from click.testing import CliRunner; from graphopt.cli import main; "
            "r = CliRunner().invoke(main, ['optimize', '--help']); assert r.exit_code == 0; "
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnxsim', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_entry_point(model_path, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphopt", "optimize", str(model_path), "-o", str(tmp_path / "o.onnx"),
                           "--target", "cpu", "--json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0].startswith("target: cpu")


@pytest.mark.slow
def test_wheel_installs_passes_under_graphopt(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                    str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("graphopt-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "graphopt/passes/simplify.py" in names
    assert not any(n.startswith("passes/") for n in names)


def test_int8_fp16_flags_and_pipeline_file_give_the_same_model(tmp_path, model_path):
    from tests.conftest import save_data

    calib = save_data(tmp_path / "calib.npz", n=40, labels=False)
    config = tmp_path / "pipe.yaml"
    config.write_text(
        "target: trt\npasses:\n  - simplify\n"
        "  - int8:\n      calib_method: minmax\n      exclude_op_types: [Gemm]\n"
        "  - fp16:\n      block_ops: [Relu]\n"
    )
    from_file, from_flags = tmp_path / "file.onnx", tmp_path / "flags.onnx"
    runner = CliRunner()
    r1 = runner.invoke(main, ["optimize", str(model_path), "-o", str(from_file), "--config", str(config),
                              "--calib-data", calib, "--no-cache"])
    assert r1.exit_code == 0, r1.output
    r2 = runner.invoke(main, ["optimize", str(model_path), "-o", str(from_flags), "--int8", "--calib-method", "minmax",
                              "--exclude-op-types", "Gemm", "--fp16", "--fp16-block-ops", "Relu", "--target", "trt",
                              "--calib-data", calib, "--no-cache"])
    assert r2.exit_code == 0, r2.output
    assert file_hash(from_file) == file_hash(from_flags)
    import onnx

    ops = {n.op_type for n in onnx.load(str(from_file)).graph.node}
    assert "QuantizeLinear" in ops and "Cast" in ops  # both passes really ran
