"""Output metrics: accuracy, top-1 agreement, cosine, non-finite outputs."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.errors import InputError
from graphopt.verify import check_metric_choice, compare_outputs, ctc_greedy_decode, mean_cosine


def test_accuracy_with_labels():
    ref = np.eye(4, dtype=np.float32)  # argmax 0,1,2,3
    cand = ref.copy()
    cand[3] = [1, 0, 0, 0]  # one sample now predicts 0
    labels = np.array([0, 1, 2, 3])
    comparison = compare_outputs({"logits": ref}, {"logits": cand}, labels)
    metric = comparison.metrics[0]
    assert metric.kind == "accuracy"
    assert metric.reference_value == 1.0 and metric.value == 0.75
    assert comparison.worst_drop == pytest.approx(25.0)
    assert not comparison.numerically_close()


def test_top1_agreement_without_labels():
    ref = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    cand = np.array([[1, 0], [0, 1], [0, 1], [0, 1]], np.float32)
    metric = compare_outputs({"probs": ref}, {"probs": cand}).metrics[0]
    assert metric.kind == "top1-agreement" and metric.value == 0.75


def test_rank2_embeddings_are_judged_by_cosine_not_argmax():
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((6, 384)).astype(np.float32)
    cand = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)
    metric = compare_outputs({"sentence_embedding": ref}, {"sentence_embedding": cand}).metrics[0]
    assert metric.kind == "cosine" and metric.value > 0.999


def test_cosine_for_non_classifier_outputs():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((3, 5, 8)).astype(np.float32)
    metric = compare_outputs({"h": ref}, {"h": ref * 2}).metrics[0]
    assert metric.kind == "cosine" and metric.value == pytest.approx(1.0)
    assert metric.max_abs_error == pytest.approx(float(np.abs(ref).max()), rel=1e-6)
    assert mean_cosine(ref, -ref) == pytest.approx(-1.0)


def test_non_finite_candidate_is_a_full_drop():
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[0, 0] = np.nan
    comparison = compare_outputs({"y": ref}, {"y": cand})
    assert not comparison.finite and comparison.worst_drop == 100.0


def test_identical_outputs_are_close():
    ref = np.random.default_rng(1).standard_normal((4, 10)).astype(np.float32)
    assert compare_outputs({"y": ref}, {"y": ref + 1e-7}).numerically_close()


def _sequence_scores():
    """(2, 3, 4) class scores per position; the candidate flips one of the six positions."""
    ref = np.zeros((2, 3, 4), np.float32)
    for n, t, c in [(0, 0, 1), (0, 1, 0), (0, 2, 3), (1, 0, 2), (1, 1, 2), (1, 2, 0)]:
        ref[n, t, c] = 1.0
    cand = ref.copy()
    cand[1, 1] = [0, 0, 0.4, 0.6]
    return ref, cand


def test_sequence_outputs_auto_judged_by_cosine_and_per_position_agreement_on_request():
    ref, cand = _sequence_scores()
    auto = compare_outputs({"out": ref}, {"out": cand}).metrics[0]
    assert auto.kind == "cosine"
    agreement = compare_outputs({"out": ref}, {"out": cand}, metric="agreement").metrics[0]
    assert agreement.kind == "top1-agreement" and agreement.value == pytest.approx(5 / 6)
    assert agreement.drop_points == pytest.approx(100 / 6)


def test_agreement_choice_keeps_cosine_for_outputs_without_a_class_axis():
    ref = np.ones((4, 1), np.float32)
    metric = compare_outputs({"score": ref}, {"score": ref * 2}, metric="agreement").metrics[0]
    assert metric.kind == "cosine"


def test_cosine_choice_overrides_labels():
    ref = np.eye(4, dtype=np.float32)
    metric = compare_outputs({"logits": ref}, {"logits": ref}, np.arange(4), metric="cosine").metrics[0]
    assert metric.kind == "cosine" and metric.value == pytest.approx(1.0)


def test_metric_choice_checks():
    check_metric_choice("agreement", None)
    with pytest.raises(InputError, match="needs labels"):
        check_metric_choice("accuracy", None)
    with pytest.raises(InputError, match="unknown metric 'f1'"):
        check_metric_choice("f1", np.arange(3))


def _one_hot_sequence(classes_per_position, classes=5):
    out = np.zeros((len(classes_per_position), classes), np.float32)
    out[np.arange(len(classes_per_position)), classes_per_position] = 1.0
    return out


def test_ctc_metric_ignores_one_step_alignment_shifts_but_not_changed_text():
    # reference decodes to (3, 2): "3 3 _ 2 _"; a shift "3 _ 2 2 _" decodes the same; "3 _ 4 _ _" does not
    ref = np.stack([_one_hot_sequence([3, 3, 0, 2, 0]), _one_hot_sequence([1, 0, 1, 0, 0])])
    shifted = np.stack([_one_hot_sequence([3, 0, 2, 2, 0]), _one_hot_sequence([1, 0, 1, 0, 0])])
    changed = np.stack([_one_hot_sequence([3, 0, 4, 0, 0]), _one_hot_sequence([1, 1, 0, 0, 0])])
    assert ctc_greedy_decode(ref) == [(3, 2), (1, 1)]
    same = compare_outputs({"out": ref}, {"out": shifted}, metric="ctc").metrics[0]
    assert same.kind == "ctc-text" and same.value == 1.0 and same.drop_points == 0.0
    assert compare_outputs({"out": ref}, {"out": shifted}, metric="agreement").metrics[0].value < 1.0
    differs = compare_outputs({"out": ref}, {"out": changed}, metric="ctc").metrics[0]
    assert differs.value == 0.0  # sample 0 reads (3, 4); sample 1 collapses "1 1" into one 1
