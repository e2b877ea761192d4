"""graphopt compare and the metrics it adds to graphopt.verify (max rel error, top-5, tolerances)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

from graphopt.cli import main
from graphopt.engines.build import build_engine
from graphopt.errors import InputError
from graphopt.verify import Tolerance, compare_outputs, max_relative_error, topk_agreement
from tests.conftest import conv_bn_model, save_data


def test_max_relative_error_ignores_near_zero_references():
    ref = np.array([[10.0, 1.0, 1e-6]], np.float32)
    cand = np.array([[10.5, 1.2, 1.0]], np.float32)
    # relative errors 0.05 and 0.2; the 1e-6 element is below 1e-3 × 10 and only counts in max abs error
    assert max_relative_error(ref, np.abs(ref - cand).astype(np.float64)) == pytest.approx(0.2, rel=1e-5)
    assert max_relative_error(np.zeros((2, 2)), np.ones((2, 2))) == 0.0


def test_top5_agreement_on_hand_made_scores():
    ref = np.tile(np.arange(8, dtype=np.float32), (4, 1))  # reference top-1 is class 7 everywhere
    cand = ref.copy()
    cand[1, 7] = 3.5  # class 7 falls to 4th place: top-5 still agrees, top-1 does not
    cand[2, 7] = -1.0  # class 7 falls to last place
    assert topk_agreement(ref, cand, 5) == pytest.approx(0.75)
    metric = compare_outputs({"logits": ref}, {"logits": cand}).metrics[0]
    assert metric.top1_agreement == pytest.approx(0.5) and metric.top5_agreement == pytest.approx(0.75)
    assert metric.cosine is not None and metric.cosine < 1.0
    narrow = compare_outputs({"logits": ref[:, :3]}, {"logits": cand[:, :3]}).metrics[0]
    assert narrow.top5_agreement is None  # fewer than 5 classes


def test_tolerances_decide_pass_and_fail():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((10, 6)).astype(np.float32)
    cand = ref * 1.001  # relative change 1e-3 everywhere
    tight = Tolerance(atol=0.0, rtol=1e-4)
    comparison = compare_outputs({"h": ref}, {"h": cand}, tolerance=tight)
    assert comparison.metrics[0].outside_tolerance == pytest.approx(1.0)
    assert comparison.failures(tight) and "outside atol 0 + rtol 0.0001" in comparison.failures(tight)[0]
    loose = Tolerance(rtol=2e-3)
    assert compare_outputs({"h": ref}, {"h": cand}, tolerance=loose).failures(loose) == []
    assert compare_outputs({"h": ref}, {"h": -cand}).failures(Tolerance(min_cosine=0.9))[0].startswith("h: cosine -1")
    labels = ref.argmax(axis=1)
    wrong = ref.copy()
    wrong[0] = -wrong[0]
    drop = compare_outputs({"logits": ref}, {"logits": wrong}, labels)
    assert drop.failures(Tolerance(max_drop=5.0))[0].startswith("quality dropped 10.000 points")
    assert drop.failures(Tolerance(max_drop=10.0)) == []
    ints = compare_outputs({"idx": np.arange(6)}, {"idx": np.array([0, 1, 2, 3, 4, 9])}, tolerance=Tolerance(atol=0))
    assert ints.metrics[0].outside_tolerance == pytest.approx(1 / 6)
    with pytest.raises(InputError, match="must be ≥ 0"):
        Tolerance(atol=-1.0)


def _perturbed(model_path, out, scale: float):
    model = onnx.load(str(model_path))
    for init in model.graph.initializer:
        if init.name == "fc_w":
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * scale, "fc_w"))
    onnx.save(model, str(out))
    return out


def test_compare_cli_same_model_passes_and_a_changed_one_fails(model_path, tmp_path):
    data = save_data(tmp_path / "d.npz", n=20)
    runner = CliRunner()
    same = runner.invoke(main, ["compare", str(model_path), str(model_path), "--data", data])
    assert same.exit_code == 0, same.output
    assert "PASS" in same.output
    changed = _perturbed(model_path, tmp_path / "c.onnx", 1.01)
    report = tmp_path / "c.json"
    failed = runner.invoke(main, ["compare", str(model_path), str(changed), "--data", data, "--json", str(report)])
    assert failed.exit_code == 1 and "candidate differs from the reference: logits:" in failed.output
    result = json.loads(report.read_text())
    assert result["passed"] is False and result["tolerance"] == {"atol": 1e-5, "rtol": 1e-3, "min_cosine": None,
                                                                 "max_drop": None}
    logits = result["outputs"][0]
    assert logits["kind"] == "accuracy" and logits["outside_tolerance"] > 0 and logits["max_rel_error"] > 1e-3
    assert logits["top1_agreement"] is not None and logits["cosine"] > 0.999
    relaxed = runner.invoke(main, ["compare", str(model_path), str(changed), "--data", data, "--min-cosine", "0.999"])
    assert relaxed.exit_code == 0, relaxed.output


def test_compare_an_onnx_model_with_its_engine_directory(model_path, tmp_path):
    build_engine(model_path, tmp_path / "engine")
    data = save_data(tmp_path / "d.npz", n=20)
    result = CliRunner().invoke(main, ["compare", str(model_path), str(tmp_path / "engine"), "--data", data,
                                       "--atol", "1e-5", "--rtol", "1e-5"])
    assert result.exit_code == 0, result.output


def test_compare_bad_input(model_path, tmp_path):
    runner = CliRunner()
    data = save_data(tmp_path / "d.npz", n=4)
    missing = runner.invoke(main, ["compare", str(model_path), str(tmp_path / "none.onnx"), "--data", data])
    assert missing.exit_code == 2 and "model or engine not found" in missing.output
    no_data = runner.invoke(main, ["compare", str(model_path), str(model_path), "--data", str(tmp_path / "x.npz")])
    assert no_data.exit_code == 2 and "data not found" in no_data.output
    other = tmp_path / "other.onnx"
    model = conv_bn_model()
    model.graph.output[0].name = "scores"
    model.graph.node[-1].output[0] = "scores"
    onnx.save(model, str(other))
    renamed = runner.invoke(main, ["compare", str(model_path), str(other), "--data", data])
    assert renamed.exit_code == 2 and "candidate has no output(s) 'logits'" in renamed.output
