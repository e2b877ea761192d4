"""optimize's latency rows (original vs optimized, interleaved) and --engine at the end of the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

import graphopt
from graphopt.cli import main
from graphopt.target import cuda_gpus


def test_latency_rows_are_measured_on_this_machine(model_path, eval_path, tmp_path):
    result = graphopt.optimize(model_path, tmp_path / "o.onnx", eval_data=eval_path, target="cpu", cache=False,
                               latency_budget=0.3)
    latency = result.report.latency
    assert latency["measured"] is True and latency["providers"] == ["CPUExecutionProvider"]
    assert latency["threads"] >= 1 and latency["batch"] == 1 and latency["budget_s"] == 0.3
    assert latency["rounds"] >= 3
    for name in ("original", "optimized"):
        stats = latency[name]
        assert stats["samples"] == latency["rounds"] and 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["max_ms"]
    assert latency["ratio_p50"] == pytest.approx(latency["optimized"]["p50_ms"] / latency["original"]["p50_ms"])
    assert json.loads(json.dumps(result.report.to_dict(), default=str))["latency"]["measured"]


def test_a_clearly_slower_optimized_model_is_a_warning(model_path, tmp_path, monkeypatch):
    import graphopt.profiling.speedup as speedup
    from graphopt.profiling.speedup import SLOWER_WARNING_RATIO

    measured = speedup.measure_speedup

    def scaled(ratio):
        def measure(*args, **kwargs):
            latency = measured(*args, **kwargs)
            latency["optimized"]["p50_ms"] = latency["original"]["p50_ms"] * ratio
            latency["ratio_p50"] = ratio
            return latency
        return measure

    monkeypatch.setattr(speedup, "measure_speedup", scaled(SLOWER_WARNING_RATIO + 0.2))
    slow = graphopt.optimize(model_path, tmp_path / "slow.onnx", target="cpu", cache=False, latency_budget=0.2)
    assert any(w.startswith(f"the optimized model runs {SLOWER_WARNING_RATIO + 0.2:.2f}×") for w in slow.report.warnings)
    monkeypatch.setattr(speedup, "measure_speedup", scaled(SLOWER_WARNING_RATIO - 0.05))
    level = graphopt.optimize(model_path, tmp_path / "level.onnx", target="cpu", cache=False, latency_budget=0.2)
    assert not any("original's latency" in w for w in level.report.warnings)


def test_cli_table_shows_the_latency_and_no_latency_skips_it(model_path, tmp_path, monkeypatch):
    monkeypatch.delenv("GRAPHOPT_LATENCY_BUDGET")
    runner = CliRunner()
    shown = runner.invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "a.onnx"), "--target", "cpu",
                                 "--latency-budget", "0.2"])
    assert shown.exit_code == 0, shown.output
    assert "latency: original vs optimized" in shown.output and "CPU, " in shown.output
    report = tmp_path / "r.json"
    skipped = runner.invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "b.onnx"), "--target", "cpu",
                                   "--no-latency", "--report", str(report)])
    assert skipped.exit_code == 0 and json.loads(report.read_text())["latency"] is None
    both = runner.invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "c.onnx"), "--no-latency",
                                "--latency-budget", "1"])
    assert both.exit_code == 2 and "not both" in both.output


@pytest.mark.skipif(bool(cuda_gpus()), reason="this machine has a GPU")
def test_a_gpu_target_is_not_timed_on_this_cpu(model_path, tmp_path):
    result = graphopt.optimize(model_path, tmp_path / "o.onnx", target="trt", cache=False, latency_budget=0.2)
    latency = result.report.latency
    assert latency["measured"] is False
    assert latency["reason"].startswith("target trt is not this machine: TensorrtExecutionProvider does not load here")


def test_engine_ends_the_pipeline(model_path, tmp_path):
    runner = CliRunner()
    report = tmp_path / "r.json"
    result = runner.invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "m.opt.onnx"), "--target", "cpu",
                                  "--engine", "ort", "--report", str(report)])
    assert result.exit_code == 0, result.output
    engine_dir = tmp_path / "m.opt.ort"
    manifest = json.loads((engine_dir / "engine.json").read_text())
    assert manifest["source"]["path"] == str(tmp_path / "m.opt.onnx")
    engine = json.loads(report.read_text())["engine"]
    assert engine["dir"] == str(engine_dir) and engine["providers"] == ["CPUExecutionProvider"]
    lonely = runner.invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "x.onnx"), "--engine-dir",
                                  str(tmp_path / "d")])
    assert lonely.exit_code == 2 and "only apply with --engine" in lonely.output


def test_engine_commands_help_imports_nothing_heavy():
    code = ("import sys; from click.testing import CliRunner; from graphopt.cli import main\n"
            "for cmd in ('build', 'profile', 'compare', 'optimize'):\n"
            "    assert CliRunner().invoke(main, [cmd, '--help']).exit_code == 0\n"
            "print(sorted(m for m in ('torch', 'tensorrt', 'onnxruntime', 'matplotlib', 'onnxsim') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_plot_without_matplotlib_names_the_extra(model_path, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(main, ["profile", str(model_path), "--plot", str(tmp_path / "p.png"), "--iters", "2"])
    assert result.exit_code == 2 and result.output.strip() == (
        "error: --plot needs matplotlib, which is not installed: pip install 'graphopt[plot]'")


def test_plot_is_written(model_path, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "p.png"
    result = CliRunner().invoke(main, ["profile", str(model_path), str(model_path), "--batch", "1,4", "--iters", "3",
                                       "--warmup", "1", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
