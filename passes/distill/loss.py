"""Distillation losses and the per-output choice between them.

**kd** (Hinton et al.; seed text sections 3.2 / 4.2) for class logits ``z`` over the last axis, with
teacher soft labels ``q_T = softmax(z_T / T)`` and student ``q_S = softmax(z_S / T)``::

    L = (1 − α) · CE(y, softmax(z_S)) + α · T² · KL(q_T ‖ q_S)

``KL(q_T ‖ q_S) = Σ_c q_T,c (log q_T,c − log q_S,c)``, averaged over samples (and positions for a
sequence of scores). ``T²`` keeps the soft term's gradients at the scale of the hard term's when ``T``
changes. Without labels ``α = 1`` (pure distillation). Defaults ``T = 3``, ``α = 0.7``.

**cosine**: ``mean_i (1 − cos(s_i, t_i))`` with each sample flattened — the quantity the manager's
cosine metric judges (:func:`graphopt.verify.mean_cosine`), so training optimises what the gate
measures. For embeddings and hidden states.

**mse**: ``mean((s − t)²) / mean(t²)`` — the squared error relative to the teacher output's power in
the batch, so outputs of different scales add up evenly and one learning rate fits them all. For maps
(detection, segmentation), regression and CTC sequences.

``auto`` per output (the report says what it chose): ``kd`` for ``(N, C)`` outputs that the manager
judges by accuracy or top-1 agreement (labels given, or class-score names); ``cosine`` for other float
outputs of rank ≤ 3 judged by cosine (embeddings, hidden states); ``mse`` for the rest (maps of rank
≥ 4, per-position class scores such as a CTC recogniser's). Integer / boolean outputs get no loss.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from graphopt.errors import InputError
from graphopt.verify import MetricChoice, metric_kind

if TYPE_CHECKING:
    from graphopt.passes.distill.substitute import LossChoice


def choose_losses(choice: LossChoice, teacher_outputs: dict[str, np.ndarray], labels: np.ndarray | None,
                  metric: MetricChoice = "auto") -> dict[str, str]:
    """Output name → ``kd`` | ``cosine`` | ``mse`` (see the module docstring); integer outputs are left out."""
    chosen: dict[str, str] = {}
    for name, array in teacher_outputs.items():
        if array.dtype.kind != "f":
            continue
        if choice == "kd" and array.ndim < 2:
            raise InputError(f"distill loss 'kd' needs class scores over a last axis; output '{name}' has "
                             f"shape {array.shape}: use --distill-loss mse or cosine")
        if choice != "auto":
            chosen[name] = choice
            continue
        kind = metric_kind(name, teacher_outputs, labels, metric)
        if kind in ("accuracy", "top1-agreement") and array.ndim == 2:
            chosen[name] = "kd"
        elif kind == "cosine" and array.ndim <= 3:
            chosen[name] = "cosine"
        else:
            chosen[name] = "mse"
    if not chosen:
        raise InputError("distill: the model has no float outputs to learn from")
    return chosen


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor | None,
            temperature: float = 3.0, alpha: float = 0.7) -> torch.Tensor:
    """``(1 − α)·CE(y, softmax(z_S)) + α·T²·KL(q_T ‖ q_S)`` over the last axis; ``α = 1`` without labels."""
    classes = student.shape[-1]
    z_s = student.reshape(-1, classes)
    z_t = teacher.reshape(-1, classes).to(z_s.dtype)
    log_q_s = F.log_softmax(z_s / temperature, dim=1)
    log_q_t = F.log_softmax(z_t / temperature, dim=1)
    soft = (log_q_t.exp() * (log_q_t - log_q_s)).sum(dim=1).mean() * temperature**2
    if labels is None:
        return soft
    hard = F.cross_entropy(z_s, labels.reshape(-1))
    return (1.0 - alpha) * hard + alpha * soft


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean_i (1 − cos(s_i, t_i))`` over samples, each flattened."""
    s = student.reshape(len(student), -1)
    t = teacher.reshape(len(teacher), -1).to(s.dtype)
    return (1.0 - F.cosine_similarity(s, t, dim=1, eps=1e-8)).mean()


def relative_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean((s − t)²) / mean(t²)`` (the teacher term detached)."""
    t = teacher.to(student.dtype)
    return ((student - t) ** 2).mean() / (t.detach() ** 2).mean().clamp_min(1e-12)


def distillation_loss(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor],
                      losses: dict[str, str], labels: torch.Tensor | None, label_output: str | None,
                      temperature: float, alpha: float) -> torch.Tensor:
    """Sum of the per-output losses; labels feed the hard term of ``label_output`` only."""
    total = torch.zeros((), device=next(iter(student.values())).device)
    for name, kind in losses.items():
        if kind == "kd":
            hard = labels if name == label_output else None
            total = total + kd_loss(student[name], teacher[name], hard, temperature, alpha)
        elif kind == "cosine":
            total = total + cosine_loss(student[name], teacher[name])
        else:
            total = total + relative_mse(student[name], teacher[name])
    return total


def label_output(losses: dict[str, str], teacher_outputs: dict[str, np.ndarray]) -> str | None:
    """The one ``(N, C)`` kd output that labels belong to, or ``None`` when it is not unique."""
    candidates = [name for name, kind in losses.items() if kind == "kd" and teacher_outputs[name].ndim == 2]
    return candidates[0] if len(candidates) == 1 else None
