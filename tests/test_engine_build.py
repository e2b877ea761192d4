"""graphopt build: engine directories, engine.json, loading, shape profiles, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from graphopt.cli import main
from graphopt.data import InputSpec, load_data
from graphopt.engines import manifest as manifest_mod
from graphopt.engines.build import BuildOptions, build_engine
from graphopt.engines.load import open_engine
from graphopt.engines.manifest import EngineManifest, EngineMismatchError, check_compatible
from graphopt.engines.shapes import ShapeRange, check_profile, derive_profile, parse_shapes
from graphopt.errors import InputError
from graphopt.model_io import file_hash
from tests.conftest import save_data


def _reference(model_path, x):
    return ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_build_ort_cpu_engine_and_run_it(model_path, tmp_path):
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["build", str(model_path), "-o", str(out), "--target", "cpu", "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.onnx"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert (out / "engine.json").stat().st_mode & 0o777 == 0o666 & ~umask  # a new file's usual mode, not 0600
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    manifest = json.loads((out / "engine.json").read_text())
    assert manifest["engine"] == "ort" and manifest["target"]["kind"] == "cpu" and manifest["format"] == 1
    assert manifest["source"]["sha256"] == file_hash(model_path) and manifest["precision"] == "fp32"
    assert manifest["ort"]["providers"] == ["CPUExecutionProvider"] and manifest["ort"]["intra_op_num_threads"] == 1
    assert manifest["ort"]["saved_model_optimization"] == "basic" and manifest["versions"]["graphopt"]
    assert manifest["inputs"][0] == {"name": "input", "dtype": "float32", "shape": ["N", 1, 8, 8]}
    # basic optimizations only: the saved file is plain ONNX (no CPU-specific fused or layout ops)
    saved = onnx.load(str(out / "model.onnx"))
    assert all(node.domain in ("", "ai.onnx") for node in saved.graph.node)
    assert "BatchNormalization" not in {node.op_type for node in saved.graph.node}  # folded into the Conv
    engine = open_engine(out)
    x = np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)
    np.testing.assert_allclose(engine.run({"input": x})["logits"], _reference(model_path, x), rtol=1e-5, atol=1e-5)


def test_model_with_external_data_builds_profiles_and_compares(model_path, tmp_path):
    """External data stays beside its file: the engine carries its own .data, the build leaves no
    staging copy behind, and a model opened by path resolves its weights (not from bytes)."""
    source = tmp_path / "ext" / "m.onnx"
    source.parent.mkdir()
    onnx.save(onnx.load(str(model_path)), str(source), save_as_external_data=True, location="m.onnx.data",
              size_threshold=0)
    out = tmp_path / "engine"
    result = CliRunner().invoke(main, ["build", str(source), "-o", str(out), "--target", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["engine.json", "model.onnx", "model.onnx.data"]
    x = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    for opened in (open_engine(out), open_engine(source)):
        np.testing.assert_allclose(opened.run({"input": x})["logits"], _reference(model_path, x), rtol=1e-5, atol=1e-5)


def test_rebuild_replaces_an_engine_but_never_other_folders(model_path, tmp_path):
    out = tmp_path / "engine"
    build_engine(model_path, out)
    (out / "stale.txt").write_text("old")
    build_engine(model_path, out)
    assert not (out / "stale.txt").exists() and (out / "engine.json").exists()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"x")
    with pytest.raises(InputError, match="non-empty folder without engine.json"):
        build_engine(model_path, other)
    with pytest.raises(InputError, match="would overwrite the input model"):
        build_engine(model_path, model_path)
    with pytest.raises(InputError, match="would overwrite the input model"):
        build_engine(out / "model.onnx", out)  # the input lives inside the engine directory
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputError, match="a file, not a folder"):
        build_engine(model_path, tmp_path / "notes.txt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine", "model.onnx", "notes.txt", "photos"]


def test_interrupted_build_leaves_nothing(model_path, tmp_path, monkeypatch):
    def interrupted(self, directory):
        raise KeyboardInterrupt

    monkeypatch.setattr(manifest_mod.EngineManifest, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        build_engine(model_path, tmp_path / "engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_missing_engine_files_are_one_line_errors(model_path, tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["profile", str(tmp_path / "nowhere"), "--iters", "1"])
    assert result.exit_code == 2 and "model or engine not found" in result.output
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["profile", str(empty), "--iters", "1"])
    assert result.exit_code == 2 and "not an engine directory" in result.output
    out = tmp_path / "engine"
    build_engine(model_path, out)
    (out / "model.onnx").unlink()
    result = runner.invoke(main, ["profile", str(out), "--iters", "1"])
    assert result.exit_code == 2 and "engine file missing" in result.output and "model.onnx" in result.output
    (out / "engine.json").write_text("{not json")
    result = runner.invoke(main, ["compare", str(model_path), str(out), "--data", save_data(tmp_path / "d.npz", 4)])
    assert result.exit_code == 2 and "cannot read" in result.output


def _trt_manifest(tmp_path, version="10.3.0", gpu=("NVIDIA A100-SXM4-80GB", [8, 0])) -> EngineManifest:
    directory = tmp_path / "trt_engine"
    directory.mkdir()
    (directory / "model.plan").write_bytes(b"plan bytes from elsewhere")
    manifest = EngineManifest(engine="trt", target={"kind": "trt"}, source={}, precision="fp16", inputs=[], outputs=[],
                              profile={}, files={"plan": "model.plan"}, versions={},
                              tensorrt={"version": version, "gpu": {"name": gpu[0], "compute_capability": gpu[1]}})
    manifest.write(directory)
    return manifest


def test_engine_from_another_gpu_or_tensorrt_is_refused_before_loading(tmp_path):
    manifest = _trt_manifest(tmp_path)
    with pytest.raises(EngineMismatchError, match=r"TensorRT 10.3.0 on NVIDIA A100-SXM4-80GB \(sm_80\); this machine has TensorRT 10.5.0"):
        check_compatible(manifest, "10.5.0", ("NVIDIA A100-SXM4-80GB", (8, 0)))
    with pytest.raises(EngineMismatchError, match=r"this machine has TensorRT 10.3.0 on NVIDIA H200 \(sm_90\)"):
        check_compatible(manifest, "10.3.0", ("NVIDIA H200", (9, 0)))
    with pytest.raises(EngineMismatchError, match="no NVIDIA GPU"):
        check_compatible(manifest, "10.3.0", None)
    warnings = check_compatible(manifest, "10.3.0", ("NVIDIA A100-PCIE-40GB", (8, 0)))
    assert len(warnings) == 1 and "same architecture" in warnings[0]
    assert check_compatible(manifest, "10.3.0", ("NVIDIA A100-SXM4-80GB", (8, 0))) == []
    # through the CLI on this machine: refused with one line, the plan never deserialized
    result = CliRunner().invoke(main, ["profile", str(tmp_path / "trt_engine"), "--iters", "1"])
    assert result.exit_code == 2 and "engine was built with TensorRT 10.3.0" in result.output


def test_shape_ranges_parse_and_check():
    profile = parse_shapes(["input:1x1x8x8:4x1x8x8:16x1x8x8", "mask:2x3"])
    assert profile["input"] == ShapeRange((1, 1, 8, 8), (4, 1, 8, 8), (16, 1, 8, 8))
    assert profile["mask"] == ShapeRange((2, 3), (2, 3), (2, 3))
    assert parse_shapes(["a:1x2,b:3"]).keys() == {"a", "b"}
    with pytest.raises(InputError, match="MIN ≤ OPT ≤ MAX"):
        parse_shapes(["input:8x1x8x8:4x1x8x8:2x1x8x8"])
    with pytest.raises(InputError, match="expects name:MIN:OPT:MAX"):
        parse_shapes(["input:1x3:4x3"])
    with pytest.raises(InputError, match="same rank"):
        parse_shapes(["input:1x3:1x3x3:1x3"])
    with pytest.raises(InputError, match="≥ 1"):
        parse_shapes(["input:0x3:1x3:2x3"])
    specs = [InputSpec("input", np.dtype(np.float32), ("N", 1, 8, 8))]
    with pytest.raises(InputError, match="changes dim 2, which the model fixes at 8"):
        check_profile(parse_shapes(["input:1x1x4x4:1x1x8x8:1x1x8x8"]), specs)
    with pytest.raises(InputError, match="has rank 2"):
        check_profile(parse_shapes(["input:1x1"]), specs)
    with pytest.raises(InputError, match="model's inputs are: input"):
        check_profile(parse_shapes(["image:1x1"]), specs)


def test_derived_profile_spans_the_batches_and_the_data(tmp_path):
    specs = [InputSpec("ids", np.dtype(np.int64), ("batch", "seq")), InputSpec("x", np.dtype(np.float32), ("batch", 4))]
    data = load_data(_npz(tmp_path, ids=np.ones((3, 12), np.int64), x=np.ones((3, 4), np.float32)))
    profile = derive_profile(specs, batches=(1, 8, 32), data=data)
    assert profile == {"ids": ShapeRange((1, 12), (32, 12), (32, 12)), "x": ShapeRange((1, 4), (32, 4), (32, 4))}
    static = [InputSpec("ids", np.dtype(np.int64), (1, "seq")), InputSpec("x", np.dtype(np.float32), (1, 4))]
    assert derive_profile(static, data=data) == {"ids": ShapeRange((1, 12), (1, 12), (1, 12))}  # static inputs need none
    given = derive_profile(specs, batches=(1,), given=parse_shapes(["ids:1x4:2x16:4x64"]))
    assert given["ids"].max == (4, 64)


def _npz(tmp_path, **arrays):
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return path


def test_shapes_outside_the_profile_are_refused(model_path, tmp_path):
    out = tmp_path / "engine"
    runner = CliRunner()
    built = runner.invoke(main, ["build", str(model_path), "-o", str(out), "--target", "cpu",
                                 "--shapes", "input:1x1x8x8:2x1x8x8:4x1x8x8"])
    assert built.exit_code == 0, built.output
    assert json.loads((out / "engine.json").read_text())["profile"]["input"]["max"] == [4, 1, 8, 8]
    inside = runner.invoke(main, ["profile", str(out), "--batch", "2,4", "--iters", "2", "--warmup", "0"])
    assert inside.exit_code == 0, inside.output
    outside = runner.invoke(main, ["profile", str(out), "--batch", "8", "--iters", "2"])
    assert outside.exit_code == 2
    assert "input 'input' of shape 8x1x8x8 is outside engine engine's profile (MIN 1x1x8x8, MAX 4x1x8x8)" in outside.output
    bad = runner.invoke(main, ["build", str(model_path), "-o", str(tmp_path / "e2"), "--target", "cpu",
                               "--shapes", "input:8x1x8x8:1x1x8x8:4x1x8x8"])
    assert bad.exit_code == 2 and "MIN ≤ OPT ≤ MAX" in bad.output and not (tmp_path / "e2").exists()


def test_build_options_refuse_impossible_combinations():
    with pytest.raises(InputError, match="runs on target trt"):
        BuildOptions(engine="trt", target="cpu")
    with pytest.raises(InputError, match="unknown engine"):
        BuildOptions(engine="openvino")  # type: ignore[arg-type]


def test_atomic_writes_get_a_new_files_usual_mode(tmp_path):
    from graphopt.model_io import save_model, write_atomic
    from tests.conftest import conv_bn_model

    umask = os.umask(0o027)
    try:
        written = [write_atomic(tmp_path / "a.json", "{}"), save_model(conv_bn_model(), tmp_path / "m.onnx")]
    finally:
        os.umask(umask)
    assert [p.stat().st_mode & 0o777 for p in written] == [0o640, 0o640]  # 0o666 & ~0o027, not mkstemp's 0600
