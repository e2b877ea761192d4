"""Distillation losses against hand-computed numbers, and the per-output loss choice."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="distillation needs torch (pip install 'graphopt[distill]')")

from graphopt.errors import InputError  # noqa: E402
from graphopt.passes.distill.loss import (  # noqa: E402
    choose_losses,
    cosine_loss,
    distillation_loss,
    kd_loss,
    label_output,
    relative_mse,
)

STUDENT = [[2.0, 0.0, -1.0]]
TEACHER = [[1.0, 3.0, 0.0]]


def _softmax(z: list[float], t: float) -> list[float]:
    exps = [math.exp(v / t) for v in z]
    return [e / sum(exps) for e in exps]


def _hand_kd(student, teacher, label, t, alpha):
    """The formula written out for one sample, in plain Python."""
    q_t, q_s = _softmax(teacher, t), _softmax(student, t)
    kl = sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(q_t, q_s))
    if label is None:
        return t * t * kl
    ce = -math.log(_softmax(student, 1.0)[label])
    return (1 - alpha) * ce + alpha * t * t * kl


@pytest.mark.parametrize("t, alpha, label", [(3.0, 0.7, 1), (1.0, 0.7, 0), (3.0, 0.0, 2), (3.0, 1.0, 1), (5.0, 0.3, 0)])
def test_kd_loss_matches_the_formula(t, alpha, label):
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([label]), t, alpha)
    assert float(got) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], label, t, alpha), rel=1e-5)


def test_kd_loss_numbers_by_hand():
    # T = 3: q_T = softmax([1/3, 1, 0]) = [0.27291, 0.53155, 0.19555]
    #        q_S = softmax([2/3, 0, -1/3]) = [0.53155, 0.27291, 0.19555]
    # KL(q_T ‖ q_S) = 0.27291·ln(0.27291/0.53155) + 0.53155·ln(0.53155/0.27291) = 0.25864·(2/3) = 0.17243
    # T²·KL = 1.55186; CE(y=1) = −ln softmax([2, 0, −1])[1] = −ln 0.114195 = 2.16984
    # L = 0.3 · 2.16984 + 0.7 · 1.55186 = 1.73725
    got = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), torch.tensor([1]), 3.0, 0.7)
    assert float(got) == pytest.approx(1.73725, abs=1e-4)


def test_without_labels_the_loss_is_pure_distillation_with_the_t_squared_factor():
    no_labels = kd_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), None, 3.0, 0.7)
    assert float(no_labels) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], None, 3.0, 0.7), rel=1e-5)
    # the soft term scales with T²: the same KL at T=3 is 9× the KL, not the KL itself
    q_t, q_s = _softmax(TEACHER[0], 3.0), _softmax(STUDENT[0], 3.0)
    kl = sum(pt * math.log(pt / ps) for pt, ps in zip(q_t, q_s))
    assert float(no_labels) == pytest.approx(9 * kl, rel=1e-5)


def test_kd_loss_is_zero_when_the_student_copies_the_teacher():
    logits = torch.tensor([[0.5, -2.0, 1.0], [3.0, 0.0, 0.1]])
    assert float(kd_loss(logits, logits, None, 3.0, 0.7)) == pytest.approx(0.0, abs=1e-7)


def test_cosine_and_relative_mse_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 2.0], [2.0, 2.0]])
    # cos = [0, 1] → mean(1 − cos) = 0.5
    assert float(cosine_loss(s, t)) == pytest.approx(0.5)
    # mean((s − t)²) = (1 + 4 + 1 + 1) / 4 = 1.75; mean(t²) = (0 + 4 + 4 + 4) / 4 = 3
    assert float(relative_mse(s, t)) == pytest.approx(1.75 / 3)


def test_labels_only_feed_the_label_output():
    student = {"logits": torch.tensor(STUDENT), "emb": torch.tensor([[1.0, 0.0]])}
    teacher = {"logits": torch.tensor(TEACHER), "emb": torch.tensor([[0.0, 1.0]])}
    losses = {"logits": "kd", "emb": "cosine"}
    total = distillation_loss(student, teacher, losses, torch.tensor([1]), "logits", 3.0, 0.7)
    assert float(total) == pytest.approx(_hand_kd(STUDENT[0], TEACHER[0], 1, 3.0, 0.7) + 1.0, rel=1e-5)


def test_auto_choice_per_output_role():
    rng = np.random.default_rng(0)
    outputs = {
        "logits": rng.standard_normal((8, 10)).astype(np.float32),
        "sentence_embedding": rng.standard_normal((8, 384)).astype(np.float32),
        "last_hidden_state": rng.standard_normal((8, 16, 384)).astype(np.float32),
        "mask": rng.standard_normal((8, 1, 32, 32)).astype(np.float32),
        "ids": np.zeros((8, 4), np.int64),
    }
    chosen = choose_losses("auto", outputs, None)
    assert chosen == {"logits": "kd", "sentence_embedding": "cosine", "last_hidden_state": "cosine", "mask": "mse"}
    assert choose_losses("mse", outputs, None)["logits"] == "mse"
    # an unnamed (N, C) output is a classifier only when labels say so
    unnamed = {"y": outputs["logits"]}
    assert choose_losses("auto", unnamed, None) == {"y": "cosine"}
    assert choose_losses("auto", unnamed, np.arange(8) % 10) == {"y": "kd"}
    assert label_output({"y": "kd"}, unnamed) == "y"


def test_kd_on_a_vector_output_is_refused():
    with pytest.raises(InputError, match="kd"):
        choose_losses("kd", {"score": np.zeros(8, np.float32)}, None)
