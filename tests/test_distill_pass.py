"""``distill`` end to end: the substitution decision, composition with other passes, data rules, caching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from graphopt.cli import main
from graphopt.engines import ort as ort_engine
from graphopt.pass_base import GraphoptPass
from tests.conftest import conv_bn_model

torch = pytest.importorskip("torch", reason="distillation needs torch (pip install 'graphopt[distill]')")

from graphopt.api import optimize  # noqa: E402
from graphopt.data import load_data  # noqa: E402
from graphopt.passes.distill import DistillOptions, DistillPass  # noqa: E402
from graphopt.passes.simplify import SimplifyPass  # noqa: E402

MODELS = Path(__file__).resolve().parents[1] / "models"
TEACHER = MODELS / "digits_cnn.onnx"
EVAL = MODELS / "digits_cnn_eval.npz"
CALIB = MODELS / "digits_cnn_calib.npz"


@pytest.fixture(scope="module")
def train_path(tmp_path_factory) -> Path:
    """The first 400 samples of the shipped digits training split (labels included)."""
    data = np.load(MODELS / "digits_cnn_train.npz")
    path = tmp_path_factory.mktemp("distill") / "train.npz"
    np.savez(path, input=data["input"][:400], labels=data["labels"][:400])
    return path


def _invoke(*args, cache: bool = False):
    flags = [] if cache else ["--no-cache"]
    return CliRunner().invoke(main, ["optimize", *map(str, args), "--target", "cpu", *flags])


def _rows(report_path: Path) -> dict:
    return {row["name"]: row for row in json.loads(report_path.read_text())["rows"]}


def test_width_half_student_improves_then_int8_applies_to_it(tmp_path, train_path):
    """A tiny end-to-end run: the pruned student gets better than its initialization, replaces the
    teacher within 1 point, and int8 then quantizes the student in the same command."""
    out, report = tmp_path / "student.onnx", tmp_path / "report.json"
    result = _invoke(TEACHER, "-o", out, "--distill", "--student-width", "0.5", "--train-data", train_path,
                     "--eval-data", EVAL, "--epochs", "8", "--int8", "--calib-data", CALIB, "--report", report)
    assert result.exit_code == 0, result.output
    rows = _rows(report)
    assert list(rows) == ["simplify", "distill", "int8"]
    stats = rows["distill"]["stats"]
    assert stats["losses"] == "logits=kd" and stats["labels"] == "used"
    assert stats["drop"] < stats["drop_before_training"]
    assert stats["substituted"] is True and stats["drop"] <= 1.0
    assert stats["weight_ratio"] < 0.4
    assert rows["int8"]["status"] == "applied"
    written = onnx.load(out)
    assert "QuantizeLinear" in {n.op_type for n in written.graph.node}
    gate = json.loads(report.read_text())["quality_gate"]
    assert gate["max_accuracy_drop"] == 1.0 and gate["passed"] is True


def test_student_that_misses_the_budget_is_not_substituted(tmp_path, train_path):
    student = tmp_path / "weak.onnx"
    onnx.save(conv_bn_model(), student)  # same interface as the teacher, random weights
    out, report = tmp_path / "out.onnx", tmp_path / "report.json"
    result = _invoke(TEACHER, "-o", out, "--distill", "--student", student, "--train-data", train_path,
                     "--eval-data", EVAL, "--epochs", "1", "--lr", "1e-7", "--report", report)
    assert result.exit_code == 0, result.output  # the final model (the teacher) meets the budget
    assert "student not substituted" in result.output
    stats = _rows(report)["distill"]["stats"]
    assert stats["substituted"] is False and stats["drop"] > 1.0
    assert "acc 99.33%" in stats["teacher"] and stats["student"] != stats["teacher"]
    assert _rows(report)["distill"]["status"] == "unchanged"
    feeds = {"input": load_data(EVAL).inputs["input"][:32]}
    teacher = ort_engine.build(onnx.load(TEACHER)).run(feeds)["logits"]
    kept = ort_engine.build(onnx.load(out)).run(feeds)["logits"]
    np.testing.assert_allclose(kept, teacher, rtol=1e-4, atol=1e-4)


def test_mismatched_student_is_refused_with_one_line(tmp_path, train_path):
    proto = conv_bn_model()
    proto.graph.input[0].name = "pixels"
    proto.graph.node[0].input[0] = "pixels"
    student = tmp_path / "other.onnx"
    onnx.save(proto, student)
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--distill", "--student", student,
                     "--train-data", train_path, "--eval-data", EVAL)
    assert result.exit_code == 2
    assert "student inputs do not match the teacher's" in result.output and "'pixels'" in result.output
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("extra, message", [
    ([], "needs train data: give --train-data"),
    (["--train-data", EVAL], "is the evaluation data"),
    (["--train-data", "TRAIN", "--student", "S", "--student-width", "0.5"], "not both"),
    (["--train-data", "TRAIN", "--device", "cuda"], "no CUDA GPU"),
])
def test_bad_distill_requests_exit_2(tmp_path, train_path, extra, message):
    student = tmp_path / "s.onnx"
    onnx.save(conv_bn_model(), student)
    if "--device" in extra and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    args = [str(train_path) if a == "TRAIN" else str(student) if a == "S" else a for a in extra]
    if "--student" not in args:
        args += ["--student-width", "0.5"]
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--distill", "--eval-data", EVAL, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_distill_flags_need_distill(tmp_path):
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--epochs", "3", "--student-width", "0.5")
    assert result.exit_code == 2
    assert "--student-width, --epochs only apply to distillation; add --distill" in result.output


def test_pipeline_file_builds_the_flags_pass_and_refuses_distill_after_int8(tmp_path):
    from graphopt.cli import pass_list_from_flags
    from graphopt.pipeline import Pipeline

    from_file = Pipeline.from_dict({"passes": ["simplify", {"distill": {"student_width": 0.5, "epochs": 4}}]})
    params = {"simplify": True, "distill": True, "student_width": 0.5, "epochs": 4, "distill_loss": "auto"}
    assert from_file.passes == pass_list_from_flags(params)
    config = tmp_path / "p.yaml"
    config.write_text("passes:\n  - int8\n  - distill: {student_width: 0.5}\n")
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--config", config)
    assert result.exit_code == 2 and "'distill' cannot run after 'int8'" in result.output


def test_pass_cache_and_teacher_output_cache(tmp_path, train_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_DIR", str(tmp_path / "cache"))
    common = ["--distill", "--student-width", "0.5", "--train-data", train_path, "--eval-data", EVAL]
    first = tmp_path / "r1.json"
    assert _invoke(TEACHER, "-o", tmp_path / "a.onnx", *common, "--epochs", "2", "--report", first, cache=True).exit_code == 0
    assert _rows(first)["distill"]["stats"]["teacher_outputs_cached"] is False
    again = tmp_path / "r2.json"
    assert _invoke(TEACHER, "-o", tmp_path / "b.onnx", *common, "--epochs", "2", "--report", again, cache=True).exit_code == 0
    assert _rows(again)["distill"]["cache_hit"] is True
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    other = tmp_path / "r3.json"  # another option: the pass reruns, the teacher's outputs come from disk
    assert _invoke(TEACHER, "-o", tmp_path / "c.onnx", *common, "--epochs", "1", "--report", other, cache=True).exit_code == 0
    assert _rows(other)["distill"]["cache_hit"] is False
    assert _rows(other)["distill"]["stats"]["teacher_outputs_cached"] is True
    assert len(list((tmp_path / "cache" / "distill-teacher").iterdir())) == 1


class HalveWeights(GraphoptPass):
    """Test stand-in for a pruning pass: zeroes the first half of the columns of every Gemm weight."""

    name = "halve-weights"

    def call(self, model: ir.Model):
        model = model.clone()
        for node in model.graph:
            if node.op_type == "Gemm":
                value = node.inputs[1]
                array = value.const_value.numpy().copy()
                array[:, : array.shape[1] // 2] = 0
                value.const_value = ir.tensor(array, name=value.name)
        return self.result(model, True)


def test_after_a_pruning_pass_the_pruned_model_is_the_student_and_keeps_its_zeros(tmp_path, train_path):
    result = optimize(TEACHER, tmp_path / "o.onnx", passes=[SimplifyPass(), HalveWeights(), DistillPass(
        DistillOptions(epochs=3))], train_data=train_path, eval_data=EVAL, cache=False)
    row = next(r for r in result.report.rows if r.name == "distill")
    assert row.stats["student_from"] == "the model earlier passes made"
    assert "teacher: the pipeline's input model" in " ".join(row.notes)
    assert row.stats["substituted"] is True and row.stats["drop"] < row.stats["drop_before_training"]
    gemm_weights = [n.inputs[1].const_value.numpy() for n in result.model.graph if n.op_type == "Gemm"]
    assert len(gemm_weights) == 2
    assert all((w[:, : w.shape[1] // 2] == 0).all() and (w[:, w.shape[1] // 2:] != 0).any() for w in gemm_weights)


def test_prune_then_distill_in_one_command(tmp_path, train_path):
    report = tmp_path / "r.json"
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--prune", "0.5", "--distill", "--train-data", train_path,
                     "--eval-data", EVAL, "--epochs", "4", "--report", report)
    assert result.exit_code == 0, result.output
    rows = _rows(report)
    assert list(rows) == ["simplify", "prune", "distill"]
    stats = rows["distill"]["stats"]
    assert stats["student_from"] == "the model earlier passes made"
    assert stats["drop"] < stats["drop_before_training"] and stats["substituted"] is True
    refused = _invoke(TEACHER, "-o", tmp_path / "p.onnx", "--prune", "0.5", "--distill", "--student-width", "0.5",
                      "--train-data", train_path, "--eval-data", EVAL)
    assert refused.exit_code == 2 and "already changed the model, which makes it the student" in refused.output


def test_without_a_student_and_nothing_pruned_distill_says_what_to_give(tmp_path, train_path):
    result = _invoke(TEACHER, "-o", tmp_path / "o.onnx", "--distill", "--train-data", train_path, "--eval-data", EVAL)
    assert result.exit_code == 2
    assert "distill needs a student: give --student PATH or --student-width W" in result.output
