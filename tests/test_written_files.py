"""What graphopt writes: modes that follow the user's umask, and nothing left behind by a failure."""

from __future__ import annotations

import contextlib
import os
import stat

import onnx
import pytest
from click.testing import CliRunner

import graphopt
import graphopt.api
import graphopt.model_io as model_io
from graphopt import large
from graphopt.cli import main
from graphopt.errors import InputError
from graphopt.model_io import load_model, save_model
from tests.conftest import conv_bn_model


@contextlib.contextmanager
def umask(value: int):
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077])
@pytest.mark.parametrize("external", [False, True])
def test_saved_files_get_the_umask_mode(tmp_path, mask, external, monkeypatch):
    if external:
        monkeypatch.setattr(large, "LARGE_MODEL_BYTES", 1024)
    with umask(mask):
        out = save_model(conv_bn_model(), tmp_path / "out.onnx")
    written = [out, *([tmp_path / "out.onnx.data"] if external else [])]
    assert all(path.exists() for path in written)
    assert {mode(path) for path in written} == {0o666 & ~mask}


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_optimize_output_and_report_get_the_umask_mode(tmp_path, model_path, mask):
    with umask(mask):
        result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "opt.onnx"),
                                           "--report", str(tmp_path / "report.json"), "--no-cache"])
    assert result.exit_code == 0, result.output
    assert mode(tmp_path / "opt.onnx") == mode(tmp_path / "report.json") == 0o666 & ~mask


def test_a_failure_after_the_pipeline_leaves_no_output(tmp_path, model_path, monkeypatch):
    """Hashing the result for the report failed after the output was written (EncodeError over 2 GB);
    the report is now complete before anything is written."""
    def fails(_model):
        raise ValueError("EncodeError: Failed to serialize proto")

    monkeypatch.setattr(graphopt.api, "model_hash", fails)
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "opt.onnx"), "--no-cache"])
    assert result.exit_code == 1
    assert "EncodeError" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_an_interrupted_external_data_save_leaves_nothing(tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(large, "LARGE_MODEL_BYTES", 1024)
    real_replace = os.replace

    def model_rename_fails(src, dst):
        if str(dst).endswith(".onnx"):
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(model_io.os, "replace", model_rename_fails)
    with pytest.raises(InputError, match="No space left"):
        save_model(load_model(model_path), tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_an_existing_output_is_replaced_whole(tmp_path, model_path):
    out = tmp_path / "out.onnx"
    out.write_bytes(b"old")
    save_model(load_model(model_path), out)
    onnx.checker.check_model(str(out))


def test_a_failed_engine_build_takes_the_written_model_back(tmp_path, model_path, monkeypatch):
    """``optimize --engine`` builds from the model it wrote; when that build fails the run leaves nothing."""
    import graphopt.engines.build as build

    def fails(*_args, **_kwargs):
        raise InputError("engine build failed: out of device memory")

    monkeypatch.setattr(build, "build_engine", fails)
    result = CliRunner().invoke(main, ["optimize", str(model_path), "-o", str(tmp_path / "opt.onnx"), "--no-cache",
                                       "--engine", "ort", "--engine-dir", str(tmp_path / "engine")])
    assert result.exit_code == 2 and "out of device memory" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
