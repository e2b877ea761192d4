"""Provider checks: a requested GPU provider that does not load is exit 2 (or a recorded fallback),
and onnxruntime's "EP Error" banner never reaches graphopt's output."""

from __future__ import annotations

import json
import os
import sys

import onnx
import pytest
from click.testing import CliRunner

from graphopt import target as target_mod
from graphopt.cli import main
from graphopt.engines.capture import captured_output
from graphopt.engines.ort import session_options
from graphopt.engines.providers import (
    ProviderUnavailableError,
    TrtProviderSettings,
    create_session,
    provider_request,
)
from graphopt.target import ort_provider_loads
from tests.conftest import conv_bn_model

CUDA_LOADS = ort_provider_loads("CUDAExecutionProvider")
no_cuda = pytest.mark.skipif(CUDA_LOADS, reason="onnxruntime's CUDA provider loads on this machine")


def test_captured_output_takes_python_and_native_writes(capfd):
    with captured_output() as captured:
        print("from python")
        sys.stderr.write("python stderr\n")
        os.write(1, b"\x1b[1;31mnative stdout\x1b[m\n")
        os.write(2, b"native stderr\n")
    assert captured.lines == ["from python", "python stderr", "native stdout", "native stderr"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_trt_provider_options():
    settings = TrtProviderSettings(fp16=True, int8=True, cache_dir=__import__("pathlib").Path("/c"), sparsity=True,
                                   profile_shapes={"x": ((1, 3), (4, 3), (8, 3)), "y": ((1,), (1,), (2,))})
    request = provider_request("trt", settings)
    assert request.providers == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    trt = request.options[0]
    assert trt["trt_fp16_enable"] == "True" and trt["trt_int8_enable"] == "True" and trt["trt_sparsity_enable"] == "True"
    assert trt["trt_engine_cache_path"] == "/c" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_profile_min_shapes"] == "x:1x3,y:1" and trt["trt_profile_max_shapes"] == "x:8x3,y:2"
    assert request.options[1]["cudnn_conv_algo_search"] == "EXHAUSTIVE"
    assert provider_request("cpu").providers == ("CPUExecutionProvider",)


@no_cuda
def test_requesting_cuda_here_fails_cleanly_and_the_banner_is_captured(capfd):
    model = conv_bn_model().SerializeToString()
    with pytest.raises(ProviderUnavailableError) as info:
        create_session(model, provider_request("cuda"), session_options())
    message = str(info.value)
    assert message.startswith("CUDAExecutionProvider did not load: ") and "--allow-fallback" in message
    assert "\n" not in message
    checked = create_session(model, provider_request("trt"), session_options(), allow_fallback=True)
    assert checked.providers == ["CPUExecutionProvider"] and checked.fell_back and checked.fallback_reason
    out, err = capfd.readouterr()
    assert "EP Error" not in out and out == "" and err == ""


@no_cuda
def test_build_for_cuda_exits_2_unless_fallback_is_allowed(model_path, tmp_path, monkeypatch):
    runner = CliRunner()
    refused = runner.invoke(main, ["build", str(model_path), "-o", str(tmp_path / "e"), "--target", "cuda"])
    assert refused.exit_code == 2 and "CUDAExecutionProvider did not load" in refused.output
    assert "no NVIDIA GPU answered" in refused.output  # not even handed to onnxruntime without a GPU
    assert not (tmp_path / "e").exists()
    # A GPU whose CUDA libraries do not load: onnxruntime tries the provider and prints its banner.
    monkeypatch.setattr(target_mod, "cuda_gpus", lambda: [target_mod.GpuInfo("Fake GPU", (9, 0))])
    allowed = runner.invoke(main, ["build", str(model_path), "-o", str(tmp_path / "e"), "--target", "cuda",
                                   "--allow-fallback", "--json"])
    assert allowed.exit_code == 0, allowed.output
    manifest = json.loads(allowed.stdout)
    assert manifest["target"]["kind"] == "cuda"
    assert manifest["ort"]["providers"] == ["CPUExecutionProvider"]  # what really ran, not what was asked
    assert manifest["ort"]["providers_requested"][0] == "CUDAExecutionProvider" and manifest["ort"]["fallback_reason"]
    assert "EP Error" not in allowed.output
    assert any("EP Error" in line or "Failed" in line for line in manifest["ort"]["provider_log"])  # kept, not shown
    # the engine built with a fallback is refused again when loaded without one
    again = runner.invoke(main, ["profile", str(tmp_path / "e"), "--iters", "2"])
    assert again.exit_code == 2 and "CUDAExecutionProvider did not load" in again.output


@no_cuda
def test_profile_cuda_exit_2_then_fallback_reports_cpu(model_path, tmp_path):
    runner = CliRunner()
    refused = runner.invoke(main, ["profile", str(model_path), "--provider", "cuda", "--iters", "2"])
    assert refused.exit_code == 2 and refused.output.count("\n") == 1
    report = tmp_path / "p.json"
    allowed = runner.invoke(main, ["profile", str(model_path), "--provider", "cuda", "--iters", "3", "--warmup", "1",
                                   "--allow-fallback", "--json", str(report)])
    assert allowed.exit_code == 0, allowed.output
    engine = json.loads(report.read_text())["engines"][0]
    assert engine["requested"] == "cuda" and engine["providers"] == ["CPUExecutionProvider"]
    assert engine["fallback_reason"] and [m["mode"] for m in engine["measurements"]] == ["host"]
    assert "fallback" in allowed.output and "EP Error" not in allowed.output


def test_unknown_provider_is_a_usage_error(model_path):
    result = CliRunner().invoke(main, ["profile", str(model_path), "--provider", "tpu"])
    assert result.exit_code == 2 and "'tpu' is not one of" in result.output
    from graphopt.errors import InputError

    with pytest.raises(InputError, match="unknown provider 'tpu'"):
        provider_request("tpu")


@no_cuda
def test_optimize_engine_on_cuda_fails_before_any_work(model_path, tmp_path):
    output = tmp_path / "o.onnx"
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(output), "--target", "cuda",
                                       "--engine", "ort"])
    assert result.exit_code == 2 and "CUDAExecutionProvider did not load" in result.output
    assert not output.exists()
    assert onnx.load(str(model_path))  # input untouched
