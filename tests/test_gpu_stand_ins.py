"""The TensorRT and CUDA code paths, run here against stand-ins (tests/gpu_fakes.py): the calls, their order,
the argtypes, device memory and stream semantics, dtypes, and the one-line errors. What only a real GPU
can show (TensorRT's kernels, numerics, speed) is in tests/test_trt.py, marked gpu / trt."""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import sys
import threading
import types

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from graphopt import target as target_mod
from graphopt.engines import cuda_driver
from graphopt.engines import trt as trt_mod
from graphopt.engines.build import BuildOptions, build_engine
from graphopt.engines.load import open_engine
from graphopt.errors import InputError
from graphopt.target import GpuInfo
from tests.conftest import conv_bn_model
from tests.gpu_fakes import CUDA_H, DataType, FakeCuda, expected_logits, fake_tensorrt

FAKE_GPU = GpuInfo("Fake H200", (9, 0))


@pytest.fixture
def fake_cuda(monkeypatch):
    """``libcuda.so.1`` is a :class:`FakeCuda`; the driver module's caches start and end empty."""
    cuda = FakeCuda()
    real_cdll = ctypes.CDLL
    monkeypatch.setattr(cuda_driver.ctypes, "CDLL",
                        lambda name, *a, **k: cuda if name == "libcuda.so.1" else real_cdll(name, *a, **k))
    cuda_driver._driver.cache_clear()
    cuda_driver._primary_context.cache_clear()
    yield cuda
    gc.collect()
    cuda_driver._driver.cache_clear()
    cuda_driver._primary_context.cache_clear()


@pytest.fixture
def fake_gpu(monkeypatch):
    for module in (target_mod, trt_mod):
        monkeypatch.setattr(module, "cuda_gpus", lambda: [FAKE_GPU])


def _install(monkeypatch, trt) -> list[str]:
    """Put ``trt`` in place of ``tensorrt``; returns the list of modules graphopt imported by name."""
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    imported = []
    real = importlib.import_module  # trt.py's own view of importlib: patching importlib itself would leak
    monkeypatch.setattr(trt_mod, "importlib", types.SimpleNamespace(
        util=importlib.util, import_module=lambda name, *a: imported.append(name) or real(name, *a)))
    return imported


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(conv_bn_model(batch="N"), str(path))
    return path


# ----------------------------------------------------------------------------------- CUDA driver
def test_driver_calls_declare_cuda_h_signatures_and_keep_64_bit_pointers(fake_cuda):
    stream = cuda_driver.Stream()
    buffer = cuda_driver.DeviceBuffer(4096)
    data = np.arange(1024, dtype=np.float32)
    back = np.zeros_like(data)
    buffer.upload(data, stream)
    buffer.download(back, stream)
    assert not back.any(), "the copy back must land only when the stream is synchronized"
    stream.synchronize()
    np.testing.assert_array_equal(back, data)
    assert buffer.pointer > 2**32 and buffer.pointer in fake_cuda.allocations  # a 64-bit address, kept whole
    assert cuda_driver.memory_in_use() == 4096
    called = fake_cuda.called()
    assert {"cuMemAlloc_v2", "cuMemcpyHtoDAsync_v2", "cuMemcpyDtoHAsync_v2", "cuStreamSynchronize"} <= set(called)
    for name, function in called.items():
        assert function.argtypes == CUDA_H[name], f"{name} argtypes {function.argtypes} differ from cuda.h"
    assert not fake_cuda.errors


def test_buffers_and_streams_work_from_another_thread_and_are_released(fake_cuda):
    stream = cuda_driver.Stream()
    made = []
    worker = threading.Thread(target=lambda: made.append(cuda_driver.DeviceBuffer(256)))  # no context there yet
    worker.start()
    worker.join()
    assert len(made) == 1 and fake_cuda.live_bytes() == 256
    del made[:]
    stream_handle = stream.handle
    del stream
    gc.collect()
    assert fake_cuda.live_bytes() == 0 and fake_cuda.destroyed_streams == [stream_handle]
    with pytest.raises(ValueError, match="does not fit"):
        cuda_driver.DeviceBuffer(8).upload(np.zeros(4, np.float32), cuda_driver.Stream())


def test_gpu_listing_skips_a_device_the_driver_cannot_describe(monkeypatch):
    class Lib:
        def cuInit(self, flags):
            return 0

        def cuDeviceGetCount(self, count):
            ctypes.cast(count, ctypes.POINTER(ctypes.c_int)).contents.value = 2
            return 0

        def cuDeviceGet(self, device, index):
            ctypes.cast(device, ctypes.POINTER(ctypes.c_int)).contents.value = index
            return 0

        def cuDeviceGetName(self, buffer, size, device):
            buffer.value = b"GPU %d" % device.value
            return 0

        def cuDeviceGetAttribute(self, value, attribute, device):
            if device.value == 1:
                return 100  # CUDA_ERROR_NO_DEVICE for this one
            ctypes.cast(value, ctypes.POINTER(ctypes.c_int)).contents.value = {75: 9, 76: 0}[attribute]
            return 0

    real_cdll = ctypes.CDLL
    monkeypatch.setattr(target_mod.ctypes, "CDLL", lambda name, *a, **k: Lib() if name == "libcuda.so.1" else real_cdll(name))
    target_mod.cuda_gpus.cache_clear()
    try:
        assert target_mod.cuda_gpus() == [GpuInfo("GPU 0", (9, 0))]
    finally:
        target_mod.cuda_gpus.cache_clear()


# ----------------------------------------------------------------------------------- TensorRT
def test_tensorrt_is_neither_imported_nor_created_without_a_gpu(monkeypatch, model_file, tmp_path):
    trt = fake_tensorrt(FakeCuda())
    imported = _install(monkeypatch, trt)
    for module in (target_mod, trt_mod):
        monkeypatch.setattr(module, "cuda_gpus", lambda: [])
    with pytest.raises(trt_mod.EngineUnavailableError, match="needs an NVIDIA GPU"):
        build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt"))
    with pytest.raises(trt_mod.EngineUnavailableError, match="needs an NVIDIA GPU"):
        trt_mod.TrtEngine(tmp_path / "model.plan")
    assert trt_mod.tensorrt_version() == "unknown"  # package metadata only: no import without a GPU
    assert imported == [] and trt.calls == []


def test_build_plan_makes_the_documented_calls_in_order(monkeypatch, fake_gpu, fake_cuda, model_file, tmp_path):
    trt = fake_tensorrt(fake_cuda)
    imported = _install(monkeypatch, trt)
    model = conv_bn_model(batch="N")
    model.metadata_props.append(onnx.StringStringEntryProto(key="graphopt.sparsity.2:4", value=json.dumps(["fc_w"])))
    onnx.save(model, str(model_file))
    cache = tmp_path / "shared.cache"
    manifest = build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt", batches=(1, 8),
                                                                     builder_optimization_level=4, timing_cache=cache))
    assert imported and set(imported) == {"tensorrt"}
    build_calls = trt.calls[:trt.calls.index("build_serialized_network") + 1]
    assert build_calls == [
        "ILogger", "Builder", ("create_network", 1 << 1), "OnnxParser", "parse_from_file",
        ("set_memory_pool_limit", "WORKSPACE", 4 << 30), ("builder_optimization_level", 4), ("set_flag", "SPARSE_WEIGHTS"),
        ("create_timing_cache", b""), ("set_timing_cache", b"", False, True),
        ("set_shape", "input", (1, 1, 8, 8), (8, 1, 8, 8), (8, 1, 8, 8)), "add_optimization_profile",
        "build_serialized_network"]
    section = manifest.tensorrt
    assert section["version"] == trt.__version__ and section["gpu"] == {"name": "Fake H200", "compute_capability": [9, 0]}
    assert section["sparse_weights"] and section["sparsity_metadata"] == {"graphopt.sparsity.2:4": ["fc_w"]}
    assert manifest.inputs == [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}]
    assert cache.read_bytes() == (tmp_path / "e" / "timing.cache").read_bytes() == b"fresh timing cache"


def test_a_timing_cache_from_another_gpu_is_replaced_with_a_warning(monkeypatch, fake_gpu, fake_cuda, model_file, tmp_path):
    trt = fake_tensorrt(fake_cuda)
    _install(monkeypatch, trt)
    cache = tmp_path / "foreign.cache"
    cache.write_bytes(b"cache from another GPU")
    manifest = build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt", timing_cache=cache))
    assert ("set_timing_cache", b"cache from another GPU", False, False) in trt.calls
    assert ("set_timing_cache", b"", False, True) in trt.calls
    assert "does not match this GPU/TensorRT" in manifest.tensorrt["warnings"][0]


def test_network_flags_follow_the_tensorrt_version():
    assert trt_mod.network_flags(fake_tensorrt(FakeCuda())) == 1 << 1
    assert trt_mod.network_flags(fake_tensorrt(FakeCuda(), strongly_typed_flag=False)) == 0  # always strongly typed


def test_engine_runs_through_device_buffers_and_streams(monkeypatch, fake_gpu, fake_cuda, model_file, tmp_path):
    trt = fake_tensorrt(fake_cuda)
    _install(monkeypatch, trt)
    build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt", batches=(1, 16)))
    engine = open_engine(tmp_path / "e")
    assert engine.on_gpu and engine.providers == [f"TensorRT {trt.__version__}"] and engine.warnings == []
    assert engine.profile["input"].max == (16, 1, 8, 8)
    trt.calls.clear()
    rng = np.random.default_rng(0)
    for batch in (2, 9, 3):  # grows the buffers once, then reuses them
        x = rng.random((batch, 1, 8, 8), dtype=np.float32)
        np.testing.assert_allclose(engine.run({"input": x})["logits"], expected_logits(x), rtol=1e-6)
    first_run = trt.calls[:trt.calls.index("execute_async_v3")]
    shapes_set = first_run.index(("set_input_shape", "input", (2, 1, 8, 8)))
    assert shapes_set < first_run.index(("get_tensor_shape", "logits")) < first_run.index(("set_tensor_address", "logits"))
    assert not fake_cuda.errors
    x = rng.random((4, 1, 8, 8), dtype=np.float32)
    runners = engine.runner.timed_runners({"input": x})
    runners["device"]()
    out = np.zeros((4, 10), np.float32)
    engine.runner._buffers["logits"].download(out, engine.runner.stream)
    engine.runner.stream.synchronize()
    np.testing.assert_allclose(out, expected_logits(x), rtol=1e-6)
    runners["host"]()
    with pytest.raises(InputError, match="outside"):
        engine.run({"input": np.zeros((17, 1, 8, 8), np.float32)})
    del engine, runners
    gc.collect()
    assert fake_cuda.live_bytes() == 0 and not fake_cuda.queues and not fake_cuda.errors


def test_shapes_the_engine_refuses_are_one_line_errors(monkeypatch, fake_gpu, fake_cuda, tmp_path):
    _install(monkeypatch, fake_tensorrt(fake_cuda))
    onnx.save(conv_bn_model(batch=1), str(tmp_path / "static.onnx"))  # no profile: TensorRT itself refuses
    build_engine(tmp_path / "static.onnx", tmp_path / "e", BuildOptions(engine="trt", target="trt"))
    runner = open_engine(tmp_path / "e").runner
    with pytest.raises(InputError, match=r"input 'input' of shape \(2, 1, 8, 8\) does not fit the engine's input \(1, 1, 8, 8\)"):
        runner.run({"input": np.zeros((2, 1, 8, 8), np.float32)})
    with pytest.raises(InputError, match="no data for engine input"):
        runner.run({})


def test_plans_that_do_not_load_and_shape_tensor_inputs_are_refused(monkeypatch, fake_gpu, fake_cuda, tmp_path):
    _install(monkeypatch, fake_tensorrt(fake_cuda))
    (tmp_path / "junk.plan").write_bytes(b"not a plan")
    with pytest.raises(InputError, match="cannot load .* Magic tag does not match"):
        trt_mod.TrtEngine(tmp_path / "junk.plan")
    trt = fake_tensorrt(fake_cuda, shape_tensor_input=True)
    _install(monkeypatch, trt)
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"FAKEPLAN" + json.dumps({"inputs": {"input": [-1, 1, 8, 8]}, "profile": {}}).encode())
    with pytest.raises(InputError, match="shape tensors"):
        trt_mod.TrtEngine(plan)


def test_engine_json_version_is_the_modules_and_a_mismatch_is_refused(monkeypatch, fake_gpu, fake_cuda, model_file, tmp_path):
    _install(monkeypatch, fake_tensorrt(fake_cuda, version="10.9.0.34"))
    build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt"))
    assert trt_mod.tensorrt_version() == "10.9.0.34"
    _install(monkeypatch, fake_tensorrt(fake_cuda, version="10.13.3.9"))
    with pytest.raises(InputError, match=r"built with TensorRT 10.9.0.34 .* this machine has TensorRT 10.13.3.9"):
        open_engine(tmp_path / "e")
    raw = json.loads((tmp_path / "e" / "engine.json").read_text())
    del raw["files"]["plan"]
    (tmp_path / "e" / "engine.json").write_text(json.dumps(raw))
    _install(monkeypatch, fake_tensorrt(fake_cuda, version="10.9.0.34"))
    with pytest.raises(InputError, match="no plan file listed"):
        open_engine(tmp_path / "e")


def test_every_tensorrt_type_maps_to_numpy_or_is_refused_in_one_line():
    import ml_dtypes

    expected = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                "UINT8": np.uint8, "INT64": np.int64, "BF16": ml_dtypes.bfloat16, "FP8": ml_dtypes.float8_e4m3fn}
    for member in DataType:
        if member.name in expected:
            assert trt_mod.numpy_dtype(member) == np.dtype(expected[member.name]), member
        else:
            with pytest.raises(InputError, match=f"'x' has TensorRT type {member.name}"):
                trt_mod.numpy_dtype(member, "'x'")


def test_bf16_outputs_come_back_as_float32(monkeypatch, fake_gpu, fake_cuda, model_file, tmp_path):
    _install(monkeypatch, fake_tensorrt(fake_cuda, output_type=DataType.BF16))
    manifest = build_engine(model_file, tmp_path / "e", BuildOptions(engine="trt", target="trt", batches=(1, 4)))
    assert manifest.outputs[0]["dtype"] == "bfloat16"
    x = np.random.default_rng(2).random((3, 1, 8, 8), dtype=np.float32)
    logits = open_engine(tmp_path / "e").run({"input": x})["logits"]
    assert logits.dtype == np.float32
    np.testing.assert_allclose(logits, expected_logits(x), rtol=1e-2)  # bf16 keeps 8 bits of mantissa


# ----------------------------------------------------------------------------------- onnxruntime providers
def _fp16_model(path):
    weight = onnx.numpy_helper.from_array(np.linspace(-1, 1, 16, dtype=np.float16).reshape(4, 4), "w")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["h"], to=TensorProto.FLOAT16), helper.make_node("MatMul", ["h", "w"], ["m"]),
         helper.make_node("Cast", ["m"], ["y"], to=TensorProto.FLOAT)],
        "fp16", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_tensorrt_provider_keeps_the_graphs_precision_and_gpu_providers_need_a_gpu(monkeypatch, tmp_path):
    import onnxruntime as ort

    asked = []
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession",
                        lambda model, options=None, providers=None, **k: asked.append(
                            [p if isinstance(p, str) else p[0] for p in providers or []])
                        or real_session(model, options, providers=providers, **k))
    monkeypatch.setattr(target_mod, "cuda_gpus", lambda: [])
    manifest = build_engine(_fp16_model(tmp_path / "h.onnx"), tmp_path / "e",
                            BuildOptions(engine="ort", target="trt", allow_fallback=True))
    trt_options = manifest.ort["provider_options"][0]
    assert "fp16" in manifest.precision and trt_options["trt_fp16_enable"] == "False"  # strongly typed in ORT
    assert trt_options["trt_int8_enable"] == "False"
    assert manifest.ort["providers"] == ["CPUExecutionProvider"]
    assert "no NVIDIA GPU answered" in manifest.ort["fallback_reason"]
    assert len(asked) >= 2 and all(providers == ["CPUExecutionProvider"] for providers in asked)
    assert target_mod.ort_provider_loads.__wrapped__("TensorrtExecutionProvider") is False


# ----------------------------------------------------------------------------------- profiling and the GPU check
def test_gpu_memory_is_only_charged_to_engines_on_a_gpu(monkeypatch, model_path):
    from graphopt.profiling import memory
    from graphopt.profiling.profiler import ProfileOptions, profile_engines

    readings = iter(range(0, 10 << 30, 1 << 30))
    monkeypatch.setattr(memory, "gpu_memory_in_use", lambda: next(readings))
    result = profile_engines([model_path], ProfileOptions(iterations=1, warmup=0))
    assert result.engines[0].gpu_memory_bytes is None


def test_gpu_profile_rows_name_each_variant_even_when_one_failed():
    from graphopt.profiling.profiler import EngineProfile, Measurement
    from graphopt.profiling.stats import summarize
    from tools.gpu_profile import _rows

    def engine(label, p50_device):
        measurements = [Measurement(1, "device", summarize([p50_device / 1e3] * 3, 1), 1.0, []),
                        Measurement(1, "host", summarize([2 * p50_device / 1e3] * 3, 1), 1.0, [])]
        return EngineProfile(label, label, "trt", "trt", ["TensorRT"], None, 0, 1 << 20, measurements)

    class Result:
        engines = [engine("a", 4.0), engine("b", 1.0)]

    rows = _rows("resnet", "trt-plan", ["fp32", "int8"], Result())  # the fp16 plan failed to build
    assert [(r[1], r[4], r[6]) for r in rows] == [("fp32", "4.000", "1.000"), ("int8", "1.000", "0.250")]
    assert _rows("resnet", "trt-plan", ["fp16", "int8"], Result())[0][6] == "–"  # no fp32 to divide by
