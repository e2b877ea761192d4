"""TensorRT and GPU paths. Without a GPU (and TensorRT) only the parts that must work everywhere run:
GPU detection says "no GPU" without crashing, TensorRT is refused with one line before any TensorRT
object exists, 2:4 sparsity metadata is read defensively. The rest is marked gpu / trt and skips with
a reason; tools/gpu_check.sh runs it on a GPU machine."""

from __future__ import annotations

import importlib
import importlib.util
import json
import types

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphopt.cli import main
from graphopt.engines import trt as trt_mod
from graphopt.engines.trt import EngineUnavailableError, TrtBuildSettings, require_gpu, sparse_24_tensors
from graphopt.errors import InputError
from graphopt.target import cuda_gpus, ort_provider_loads
from tests.conftest import conv_bn_model

HAS_GPU = bool(cuda_gpus())
HAS_TRT = HAS_GPU and importlib.util.find_spec("tensorrt") is not None
needs_gpu = pytest.mark.skipif(not HAS_GPU, reason="no NVIDIA GPU answers through the CUDA driver here")
needs_trt = pytest.mark.skipif(not HAS_TRT, reason="needs TensorRT (pip install 'graphopt[trt]') and an NVIDIA GPU")
no_gpu = pytest.mark.skipif(HAS_GPU, reason="this machine has a GPU")


@no_gpu
def test_gpu_detection_says_no_gpu_without_crashing():
    assert cuda_gpus() == []
    with pytest.raises(EngineUnavailableError, match="TensorRT needs an NVIDIA GPU"):
        require_gpu()


@no_gpu
def test_trt_engine_is_refused_before_any_tensorrt_object(model_path, tmp_path, monkeypatch):
    imported = []
    real = importlib.import_module  # recorded for trt.py alone: patching importlib itself leaks into
    monkeypatch.setattr(trt_mod, "importlib",  # whatever binds import_module while the test runs
                        types.SimpleNamespace(util=importlib.util,
                                              import_module=lambda name, *a: imported.append(name) or real(name, *a)))
    result = CliRunner().invoke(main, ["build", str(model_path), "-o", str(tmp_path / "e"), "--engine", "trt"])
    assert result.exit_code == 2 and "TensorRT needs an NVIDIA GPU" in result.output
    assert imported == [] and not (tmp_path / "e").exists()
    optimized = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "o.onnx"), "--engine", "trt"])
    assert optimized.exit_code == 2 and "TensorRT needs an NVIDIA GPU" in optimized.output
    assert not (tmp_path / "o.onnx").exists()


def test_sparsity_metadata_of_the_pruning_pass_is_read(tmp_path):
    from graphopt.passes.prune import PruneOptions, PrunePass
    from graphopt.sparsity import SPARSITY_2_4_KEY

    pruned = PrunePass(PruneOptions(amount=0.5, mode="2:4", skip_first_last=False))(ir.from_proto(conv_bn_model())).model
    proto = ir.to_proto(pruned)
    found = sparse_24_tensors(proto)
    assert list(found) == [SPARSITY_2_4_KEY] and found[SPARSITY_2_4_KEY]
    assert set(found[SPARSITY_2_4_KEY]) <= {init.name for init in proto.graph.initializer}

    model = conv_bn_model()
    for key, value in {SPARSITY_2_4_KEY: json.dumps(["w", "not_an_initializer"]),
                       "graphopt.sparsity.unstructured": json.dumps(["fc_w"])}.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    assert sparse_24_tensors(model) == {SPARSITY_2_4_KEY: ["w"]}
    broken = conv_bn_model()
    broken.metadata_props.append(onnx.StringStringEntryProto(key=SPARSITY_2_4_KEY, value="{]"))
    assert sparse_24_tensors(broken) == {} and sparse_24_tensors(conv_bn_model()) == {}


def test_trt_build_settings_are_checked():
    with pytest.raises(InputError, match="0–5"):
        TrtBuildSettings(builder_optimization_level=7)
    with pytest.raises(InputError, match="workspace"):
        TrtBuildSettings(workspace_bytes=0)


# ------------------------------------------------------------------------------------------ on a GPU
@pytest.mark.gpu
@needs_gpu
def test_device_buffers_round_trip_and_memory_is_counted():
    from graphopt.engines import cuda_driver

    stream = cuda_driver.Stream()
    before = cuda_driver.memory_in_use()
    buffer = cuda_driver.DeviceBuffer(64 << 20)
    assert cuda_driver.memory_in_use() - before >= 60 << 20
    data = np.random.default_rng(0).random(1 << 20, dtype=np.float32)
    back = np.empty_like(data)
    buffer.upload(data, stream)
    buffer.download(back, stream)
    stream.synchronize()
    np.testing.assert_array_equal(back, data)
    with pytest.raises(ValueError, match="does not fit"):
        buffer.upload(np.zeros(64 << 20, np.float32), stream)


def _torch_cuda():
    """torch when it is installed with CUDA and sees the GPU (a second opinion on ours), else a skip."""
    torch = pytest.importorskip("torch", reason="needs torch to cross-check the CUDA driver calls")
    if not torch.cuda.is_available():
        pytest.skip("torch is installed without CUDA or does not see the GPU")
    return torch


@pytest.mark.gpu
@needs_gpu
def test_gpu_name_capability_and_memory_agree_with_torch():
    from graphopt.engines import cuda_driver

    torch = _torch_cuda()
    gpu = cuda_gpus()[0]
    assert gpu.name == torch.cuda.get_device_name(0)
    assert gpu.compute_capability == torch.cuda.get_device_capability(0)
    cuda_driver.memory_in_use()
    assert cuda_driver.memory_in_use() <= torch.cuda.mem_get_info(0)[1]


@pytest.mark.gpu
@needs_gpu
def test_device_buffers_share_the_cuda_runtimes_context_from_any_thread():
    """What TensorRT and onnxruntime read from our buffers (they use the runtime API's primary context)."""
    import threading

    from graphopt.engines import cuda_driver

    torch = _torch_cuda()
    made = []
    thread = threading.Thread(target=lambda: made.append(cuda_driver.DeviceBuffer(4 << 20)))
    thread.start()
    thread.join()
    buffer, stream = made[0], cuda_driver.Stream()
    assert buffer.pointer > 2**32  # device addresses use the full 64 bits
    data = np.random.default_rng(1).random(1 << 20, dtype=np.float32)
    buffer.upload(data, stream)
    stream.synchronize()

    class View:  # CUDA array interface over our pointer, read by torch without a copy
        __cuda_array_interface__ = {"shape": (1 << 20,), "typestr": "<f4", "data": (buffer.pointer, False), "version": 3}

    shared = torch.as_tensor(View(), device="cuda")
    np.testing.assert_array_equal(shared.cpu().numpy(), data)
    shared.mul_(2)
    torch.cuda.synchronize()
    back = np.empty_like(data)
    buffer.download(back, stream)
    stream.synchronize()
    np.testing.assert_array_equal(back, 2 * data)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_without_tensorrt_a_gpu_machine_refuses_trt_in_one_line(model_path, tmp_path):
    result = CliRunner().invoke(main, ["build", str(model_path), "-o", str(tmp_path / "e"), "--engine", "trt"])
    assert result.exit_code == 2 and "TensorRT is not installed" in result.output
    assert result.output.count("\n") == 1 and not (tmp_path / "e").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not ort_provider_loads("CUDAExecutionProvider"), reason="onnxruntime's CUDA provider does not load here")
def test_profile_on_cuda_reports_with_and_without_copies(model_path, tmp_path):
    report = tmp_path / "p.json"
    result = CliRunner().invoke(main, ["profile", str(model_path), "--provider", "cuda", "--batch", "1,8",
                                       "--iters", "20", "--json", str(report)])
    assert result.exit_code == 0, result.output
    engine = json.loads(report.read_text())["engines"][0]
    assert engine["providers"][0] == "CUDAExecutionProvider" and engine["fallback_reason"] is None
    assert {m["mode"] for m in engine["measurements"]} == {"host", "device"}
    assert engine["gpu_memory_bytes"] is not None


def _dynamic_model(path):
    onnx.save(conv_bn_model(batch="N"), str(path))
    return path


@pytest.mark.trt
@needs_trt
def test_trt_build_load_run_matches_onnxruntime(tmp_path):
    from graphopt.engines.build import BuildOptions, build_engine
    from graphopt.engines.load import open_engine

    model = _dynamic_model(tmp_path / "m.onnx")
    cache = tmp_path / "shared.cache"
    manifest = build_engine(model, tmp_path / "e", BuildOptions(engine="trt", target="trt", batches=(1, 8),
                                                                timing_cache=cache))
    assert manifest.tensorrt["strongly_typed"] and manifest.profile["input"]["max"] == [8, 1, 8, 8]
    assert (tmp_path / "e" / "model.plan").stat().st_size > 0 and cache.stat().st_size > 0
    engine = open_engine(tmp_path / "e")
    x = np.random.default_rng(0).random((5, 1, 8, 8), dtype=np.float32)
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(engine.run({"input": x})["logits"], reference, rtol=1e-2, atol=1e-2)
    with pytest.raises(InputError, match="outside"):
        engine.run({"input": np.zeros((9, 1, 8, 8), np.float32)})
    runners = engine.runner.timed_runners({"input": x})
    runners["device"](), runners["host"]()


@pytest.mark.trt
@needs_trt
def test_trt_plan_from_another_version_is_refused(tmp_path):
    from graphopt.engines.build import BuildOptions, build_engine

    model = _dynamic_model(tmp_path / "m.onnx")
    build_engine(model, tmp_path / "e", BuildOptions(engine="trt", target="trt"))
    path = tmp_path / "e" / "engine.json"
    raw = json.loads(path.read_text())
    raw["tensorrt"]["version"] = "8.6.1"
    path.write_text(json.dumps(raw))
    result = CliRunner().invoke(main, ["profile", str(tmp_path / "e"), "--iters", "2"])
    assert result.exit_code == 2 and "built with TensorRT 8.6.1" in result.output


@pytest.mark.trt
@needs_trt
def test_compare_onnxruntime_cpu_with_tensorrt(tmp_path):
    from graphopt.engines.build import BuildOptions, build_engine

    model = _dynamic_model(tmp_path / "m.onnx")
    build_engine(model, tmp_path / "e", BuildOptions(engine="trt", target="trt", batches=(1, 16)))
    np.savez(tmp_path / "d.npz", input=np.random.default_rng(1).random((32, 1, 8, 8), dtype=np.float32))
    result = CliRunner().invoke(main, ["compare", str(model), str(tmp_path / "e"), "--data", str(tmp_path / "d.npz"),
                                       "--min-cosine", "0.999"])
    assert result.exit_code == 0, result.output

