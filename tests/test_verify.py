"""Output metrics: accuracy, top-1 agreement, cosine, non-finite outputs."""

from __future__ import annotations

import numpy as np
import pytest

from graphopt.verify import compare_outputs, mean_cosine


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
