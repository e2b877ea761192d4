"""The reference-model registry and the committed digits artifacts.

Fast tests need only onnx, onnxruntime and numpy; rebuilding tests skip without torch / scikit-learn.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import models
from models import REFERENCE_MODELS, ReferenceModel, build_model, get_model
from models.artifacts import read_npz, write_npz

COMMITTED = [m.name for m in REFERENCE_MODELS.values() if m.committed]
#: Lowest acceptable fp32 top-1 accuracy on the held-out eval set (measured: cnn 0.993, mlp 0.970).
MIN_ACCURACY = {"digits-cnn": 0.97, "digits-mlp": 0.95}


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str, ...]:
    return tuple(
        d.dim_param if d.HasField("dim_param") else d.dim_value for d in value_info.type.tensor_type.shape.dim
    )


def check_against_spec(model_path: Path, npz_paths: tuple[Path, ...], spec: dict) -> onnx.ModelProto:
    """Model inputs and every data file agree with the registry's ``input_spec`` (names, dtypes, fixed dims)."""
    proto = onnx.load(str(model_path))
    onnx.checker.check_model(proto)
    assert all(t.data_location == onnx.TensorProto.DEFAULT for t in proto.graph.initializer), "external data"
    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == list(spec), f"model inputs {list(inputs)} != spec {list(spec)}"
    for name, (shape, dtype) in spec.items():
        dims = _dims(inputs[name])
        elem = onnx.helper.tensor_dtype_to_np_dtype(inputs[name].type.tensor_type.elem_type)
        assert elem == np.dtype(dtype), f"{name}: model dtype {elem} != spec {dtype}"
        assert len(dims) == len(shape)
        for got, want in zip(dims, shape):
            if isinstance(want, str):
                assert isinstance(got, str) and got, f"{name}: dim {want} should be symbolic, model has {got}"
            else:
                assert got == want, f"{name}: model shape {dims} != spec {shape}"
    for path in npz_paths:
        data = read_npz(path)
        assert set(data) - {"labels"} == set(spec), f"{path.name}: keys {sorted(data)}"
        n = {len(v) for v in data.values()}
        assert len(n) == 1 and n.pop() > 0, f"{path.name}: inputs disagree on the number of samples"
        for name, (shape, dtype) in spec.items():
            assert data[name].dtype == np.dtype(dtype), f"{path.name}:{name} dtype {data[name].dtype}"
            assert data[name].ndim == len(shape)
            for got, want in zip(data[name].shape[1:], shape[1:]):
                assert isinstance(want, str) or got == want, f"{path.name}:{name} shape {data[name].shape}"
        if "labels" in data:
            assert data["labels"].dtype == np.int64
    return proto


def test_import_models_is_light():
    code = "import sys, models; print([m for m in ('torch', 'transformers', 'onnx', 'onnxruntime', 'sklearn') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(models.__file__).parent.parent,
    )
    assert out.stdout.strip() == "[]"


def test_registry_names_and_fields():
    names = [m.name for m in REFERENCE_MODELS.values()]
    assert names == list(REFERENCE_MODELS)
    assert len({m.stem for m in REFERENCE_MODELS.values()}) == len(names)
    for m in REFERENCE_MODELS.values():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", m.name), m.name
        assert m.check in models.CHECKS
        assert m.input_spec and all(np.dtype(dtype) for _, dtype in m.input_spec.values())
    assert {"digits-cnn", "digits-mlp"} <= set(COMMITTED)


def test_get_model_unknown_lists_known_names():
    with pytest.raises(ValueError, match="digits-cnn"):
        get_model("no-such-model")


def test_bad_check_is_refused():
    with pytest.raises(ValueError, match="check"):
        ReferenceModel("x", "", build=lambda d: d, input_spec={}, check="bleu", committed=False, data=None)


def test_build_model_names_missing_packages(monkeypatch, tmp_path):
    def build(out_dir):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    fake = ReferenceModel(
        "fake",
        "",
        build=build,
        input_spec={"x": ((1,), "float32")},
        check="cosine",
        committed=False,
        data=None,
        requires=("torch>=2.2",),
    )
    monkeypatch.setitem(REFERENCE_MODELS, "fake", fake)
    with pytest.raises(ImportError, match=r"torch>=2\.2"):
        build_model("fake", tmp_path)


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_matches_spec_and_is_small(name):
    model = get_model(name)
    model_path, calib_path, eval_path = build_model(name)  # committed: returns the shipped files
    assert model_path == models.MODELS_DIR / f"{model.stem}.onnx"
    for path in (model_path, calib_path, eval_path):
        assert path.parent == models.MODELS_DIR and path.stat().st_size < 1_000_000
    proto = check_against_spec(model_path, (calib_path, eval_path), model.input_spec)
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert "labels" in read_npz(eval_path)


@pytest.mark.parametrize("name", COMMITTED)
def test_committed_model_accuracy(name):
    model_path, calib_path, eval_path = build_model(name)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    for path, bound in ((eval_path, MIN_ACCURACY[name]), (calib_path, MIN_ACCURACY[name] - 0.05)):
        data = read_npz(path)
        (logits,) = session.run(["logits"], {"input": data["input"]})
        assert logits.shape == (len(data["labels"]), 10)
        accuracy = float((logits.argmax(axis=1) == data["labels"]).mean())
        assert accuracy >= bound, f"{name} on {path.name}: top-1 {accuracy:.3f} < {bound}"


def test_digits_cnn_keeps_batchnorm_for_the_simplify_demo():
    proto = onnx.load(str(build_model("digits-cnn")[0]))
    ops = [n.op_type for n in proto.graph.node]
    assert "BatchNormalization" in ops and "Add" in ops and "Gemm" in ops


def test_digits_calib_and_eval_are_disjoint():
    _, calib_path, eval_path = build_model("digits-mlp")
    calib = {row.tobytes() for row in read_npz(calib_path)["input"]}
    held_out = read_npz(eval_path)["input"]
    overlap = sum(row.tobytes() in calib for row in held_out)
    assert overlap == 0, f"{overlap} eval images also in calib"


def test_write_npz_is_byte_stable(tmp_path):
    arrays = {"input": np.arange(12, dtype=np.float32).reshape(3, 4), "labels": np.array([0, 1, 2])}
    a = write_npz(tmp_path / "a.npz", arrays).read_bytes()
    b = write_npz(tmp_path / "b.npz", arrays).read_bytes()
    assert a == b
    loaded = read_npz(tmp_path / "a.npz")
    assert list(loaded) == ["input", "labels"] and np.array_equal(loaded["input"], arrays["input"])


def test_digits_data_regenerates_byte_identical(tmp_path):
    pytest.importorskip("sklearn")
    from models import build_digits

    for kind in build_digits.KINDS:
        for new in build_digits.write_data(kind, tmp_path):
            assert new.read_bytes() == (models.MODELS_DIR / new.name).read_bytes(), new.name


def test_cli_lists_every_model(capsys):
    from models.__main__ import main

    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in REFERENCE_MODELS)


@pytest.mark.slow
def test_digits_mlp_retrains_to_the_committed_model(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    model_path, _, eval_path = build_model("digits-mlp", tmp_path)
    data = read_npz(models.MODELS_DIR / "digits_mlp_eval.npz")
    rebuilt = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    shipped = ort.InferenceSession(
        str(models.MODELS_DIR / "digits_mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    a = rebuilt.run(["logits"], {"input": data["input"]})[0].argmax(1)
    b = shipped.run(["logits"], {"input": data["input"]})[0].argmax(1)
    assert (a == b).mean() >= 0.99


@pytest.mark.slow
def test_transformer_encoder_builds_and_runs(tmp_path):
    pytest.importorskip("torch")
    model = get_model("transformer-encoder")
    model_path, calib_path, eval_path = build_model(model.name, tmp_path)
    check_against_spec(model_path, (calib_path, eval_path), model.input_spec)
    data = read_npz(eval_path)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (hidden,) = session.run(["last_hidden_state"], {k: v[:4, :32] for k, v in data.items()})
    assert hidden.shape == (4, 32, 256) and np.isfinite(hidden).all()
    assert build_model(model.name, tmp_path)[0].stat().st_mtime == model_path.stat().st_mtime  # idempotent
