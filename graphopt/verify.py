"""Output comparison between a reference model and a candidate, one metric per output.

Metric per output (decided from the reference output and the labels):

* **accuracy** — the only rank-2 float output (``(N, C)``, ``C > 1``) when labels are given:
  fraction of samples whose argmax equals the label.
  ``drop`` = reference accuracy − candidate accuracy, in percentage points.
* **top1-agreement** — rank-2 float outputs whose name says they are class scores (``logits``,
  ``probs``, ``scores``, ``class``…): fraction of samples whose argmax equals the reference
  argmax. ``drop`` = 100 − agreement %. Shape alone cannot tell logits from embeddings
  (``(N, 384)`` sentence embeddings are rank 2 too), so without labels or such a name an output
  is judged by cosine. For an output of rank > 2 (a sequence of class scores, ``(N, T, C)``) the
  argmax is taken over the last axis at every position: agreement = share of the ``N·T`` positions.
* **cosine** — everything else: mean over samples of cos(ref_i, cand_i) with each sample
  flattened. ``drop`` = 100·(1 − mean cosine).

The user may override the choice (``metric``, CLI ``--metric``): ``agreement`` judges every float
output whose last axis has ≥ 2 entries by argmax agreement (per position for sequences: a token
tagger), ``cosine`` judges every float output by cosine, and ``accuracy`` insists on labels.
``ctc`` judges sequence outputs ``(N, T, C)`` of a CTC recogniser by the text they decode to
(**ctc-text**): greedy decoding — argmax per position, repeats collapsed, blank class 0 removed (the
convention of PaddleOCR, torch's ``CTCLoss`` and most CRNNs) — and the share of samples whose decoded
sequence equals the reference's; ``drop`` = 100 − that share %. A per-position flip that only moves a
character by one step (``a _`` → ``_ a``) decodes to the same text and costs nothing here.
``auto`` is the rule above.

Every metric also records ``max_abs_error`` = max |ref − cand|, whether the candidate is finite, and
(for ``graphopt compare``, all optional in the constructor):

* ``max_rel_error`` = max over elements of |ref − cand| / |ref|, over the elements whose |ref| is at
  least ``REL_FLOOR`` × max |ref| (relative error near zero says nothing; max abs error covers them);
* ``cosine`` — the mean per-sample cosine of every float output, whatever its metric;
* ``top1_agreement`` / ``top5_agreement`` for classifier outputs ``(N, C)``: share of samples whose
  reference top-1 class is the candidate's top-1 / among the candidate's top-5 (``C ≥ 5``);
* ``outside_tolerance`` — with a :class:`Tolerance` that sets ``atol`` / ``rtol``: the share of elements
  with |ref − cand| > atol + rtol·|ref| (numpy's ``isclose`` rule).

A :class:`Tolerance` turns a comparison into pass/fail (:meth:`Comparison.failures`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from graphopt.errors import InputError

MetricKind = Literal["accuracy", "top1-agreement", "cosine", "ctc-text"]
MetricChoice = Literal["auto", "accuracy", "agreement", "cosine", "ctc"]
METRIC_CHOICES: tuple[str, ...] = ("auto", "accuracy", "agreement", "cosine", "ctc")
CTC_BLANK = 0
REL_FLOOR = 1e-3


@dataclasses.dataclass(frozen=True)
class OutputMetric:
    output: str
    kind: MetricKind
    value: float
    """accuracy / agreement as a fraction, or the mean cosine similarity."""
    reference_value: float
    """The reference model's own value (its accuracy; 1.0 for agreement and cosine)."""
    max_abs_error: float
    max_abs_reference: float
    finite: bool
    max_rel_error: float = 0.0
    cosine: float | None = None
    top1_agreement: float | None = None
    top5_agreement: float | None = None
    outside_tolerance: float | None = None
    """Share of elements outside ``atol + rtol·|ref|`` when the comparison had such a tolerance."""

    @property
    def drop_points(self) -> float:
        """Quality lost, in percentage points (0 = identical, see the module docstring)."""
        if not self.finite:
            return 100.0
        return 100.0 * (self.reference_value - self.value)

    @property
    def relative_error(self) -> float:
        """max |ref − cand| / max |ref| (how far from numerically identical)."""
        return self.max_abs_error / max(self.max_abs_reference, 1e-12)

    def summary(self) -> str:
        if not self.finite:
            return f"{self.output}: NaN/Inf"
        if self.kind == "accuracy":
            return f"acc {100 * self.value:.2f}% (ref {100 * self.reference_value:.2f}%)"
        if self.kind == "top1-agreement":
            return f"top-1 agree {100 * self.value:.2f}%, max|Δ| {self.max_abs_error:.3g}"
        if self.kind == "ctc-text":
            return f"CTC text match {100 * self.value:.2f}%, max|Δ| {self.max_abs_error:.3g}"
        return f"cos {self.value:.5f}, max|Δ| {self.max_abs_error:.3g}"

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "drop_points": self.drop_points}


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Pass/fail rules for ``graphopt compare``; unset (``None``) rules are not checked.

    ``atol`` / ``rtol``: every element within ``atol + rtol·|ref|`` (either alone means the other is 0);
    ``min_cosine``: every float output's mean cosine at least this; ``max_drop``: the worst drop
    (percentage points, by the chosen metric) at most this."""

    atol: float | None = None
    rtol: float | None = None
    min_cosine: float | None = None
    max_drop: float | None = None

    def __post_init__(self) -> None:
        for name in ("atol", "rtol", "max_drop"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be ≥ 0, got {value}")
        if self.min_cosine is not None and not -1 <= self.min_cosine <= 1:
            raise InputError(f"--min-cosine must be in [-1, 1], got {self.min_cosine}")

    @property
    def elementwise(self) -> bool:
        return self.atol is not None or self.rtol is not None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The metrics of every output of a candidate against the reference."""

    metrics: tuple[OutputMetric, ...]
    samples: int

    @property
    def finite(self) -> bool:
        return all(m.finite for m in self.metrics)

    @property
    def worst_drop(self) -> float:
        return max((m.drop_points for m in self.metrics), default=0.0)

    def failures(self, tolerance: Tolerance) -> list[str]:
        """One line per rule of ``tolerance`` that an output breaks (empty: the candidate passes)."""
        failed = []
        for m in self.metrics:
            if not m.finite:
                failed.append(f"{m.output}: NaN/Inf in the candidate")
                continue
            if tolerance.elementwise and m.outside_tolerance:
                failed.append(f"{m.output}: {100 * m.outside_tolerance:.3g}% of elements outside atol {tolerance.atol or 0:g} "
                              f"+ rtol {tolerance.rtol or 0:g}·|ref| (max abs {m.max_abs_error:.3g}, max rel {m.max_rel_error:.3g})")
            if tolerance.min_cosine is not None and m.cosine is not None and m.cosine < tolerance.min_cosine:
                failed.append(f"{m.output}: cosine {m.cosine:.6f} < {tolerance.min_cosine:g}")
        if tolerance.max_drop is not None and self.worst_drop > tolerance.max_drop:
            failed.append(f"quality dropped {self.worst_drop:.3f} points (allowed {tolerance.max_drop:g})")
        return failed

    def numerically_close(self, rtol: float = 1e-3) -> bool:
        """True when every output matches the reference to ``rtol`` of its largest magnitude and
        classifier outputs agree on every sample."""
        return self.finite and all(
            m.relative_error <= rtol and (m.kind == "cosine" or m.value >= m.reference_value) for m in self.metrics
        )

    def summary(self) -> str:
        return "; ".join(m.summary() for m in self.metrics)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "worst_drop_points": self.worst_drop, "outputs": [m.to_dict() for m in self.metrics]}


CLASS_SCORE_NAMES = ("logit", "prob", "score", "class", "pred", "softmax")


def is_classifier_output(array: np.ndarray) -> bool:
    """Shape test: ``(N, C)`` float with more than one class."""
    return array.ndim == 2 and array.shape[1] > 1 and array.dtype.kind == "f"


def has_class_axis(array: np.ndarray) -> bool:
    """Float output of rank ≥ 2 whose last axis has more than one entry (scores per position)."""
    return array.ndim >= 2 and array.shape[-1] > 1 and array.dtype.kind == "f"


def metric_kind(name: str, reference: dict[str, np.ndarray], labels: np.ndarray | None,
                choice: MetricChoice = "auto") -> MetricKind:
    """The metric for output ``name`` (see the module docstring)."""
    array = reference[name]
    if choice == "cosine":
        return "cosine"
    if choice == "agreement":
        return "top1-agreement" if has_class_axis(array) else "cosine"
    if choice == "ctc":
        return "ctc-text" if array.ndim == 3 and has_class_axis(array) else "cosine"
    if not is_classifier_output(array):
        return "cosine"
    classifier_outputs = [n for n, a in reference.items() if is_classifier_output(a)]
    if labels is not None and len(classifier_outputs) == 1 and len(labels) == len(array):
        return "accuracy"
    if any(hint in name.lower() for hint in CLASS_SCORE_NAMES):
        return "top1-agreement"
    return "cosine"


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """Signal-to-quantization-noise ratio ``10·log10(signal / noise)`` in dB; ``inf`` without noise.

    Powers may be sums or means (the ratio is the same); a zero signal counts as 1e-30."""
    if noise_power <= 0.0:
        return float("inf")
    return float(10.0 * np.log10(max(float(signal_power), 1e-30) / noise_power))


def mean_cosine(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Mean over samples (axis 0) of the cosine similarity of the flattened samples.

    Two all-zero samples count as identical (cosine 1)."""
    ref = reference.reshape(len(reference), -1).astype(np.float64) if reference.ndim else reference.reshape(1, -1).astype(np.float64)
    cand = candidate.reshape(ref.shape).astype(np.float64)
    dot = (ref * cand).sum(axis=1)
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    both_zero = (np.linalg.norm(ref, axis=1) == 0) & (np.linalg.norm(cand, axis=1) == 0)
    cos = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cos = np.where(both_zero, 1.0, cos)
    return float(cos.mean())


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of positions whose argmax over the last axis is the same in both arrays ((N, C): per
    sample; (N, T, C): per position)."""
    classes = reference.shape[-1]
    return float(np.mean(reference.reshape(-1, classes).argmax(axis=1) == candidate.reshape(-1, classes).argmax(axis=1)))


def ctc_greedy_decode(scores: np.ndarray, blank: int = CTC_BLANK) -> list[tuple[int, ...]]:
    """Per sample of ``(N, T, C)`` scores: argmax per position, repeats collapsed, ``blank`` removed."""
    best = scores.argmax(axis=-1)
    decoded = []
    for row in best:
        changed = np.concatenate([[True], row[1:] != row[:-1]])
        decoded.append(tuple(int(c) for c in row[changed] if c != blank))
    return decoded


def ctc_text_match(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of samples whose greedy CTC decoding is the same in both arrays."""
    ref, cand = ctc_greedy_decode(reference), ctc_greedy_decode(candidate)
    return float(np.mean([a == b for a, b in zip(ref, cand)]))


def check_metric_choice(choice: str, labels: np.ndarray | None) -> None:
    """Refuse an unknown choice, and ``accuracy`` without labels."""
    if choice not in METRIC_CHOICES:
        raise InputError(f"unknown metric {choice!r}; choose one of {', '.join(METRIC_CHOICES)}")
    if choice == "accuracy" and labels is None:
        raise InputError("metric 'accuracy' needs labels: add a 'labels' array to the evaluation data")


def max_relative_error(reference: np.ndarray, difference: np.ndarray) -> float:
    """max |Δ| / |ref| over elements with |ref| ≥ ``REL_FLOOR`` · max |ref| (0 for an all-zero reference)."""
    magnitude = np.abs(reference.astype(np.float64))
    floor = REL_FLOOR * float(magnitude.max(initial=0.0))
    considered = magnitude >= floor if floor > 0 else np.zeros(magnitude.shape, bool)
    if not considered.any():
        return 0.0
    return float((difference[considered] / magnitude[considered]).max())


def topk_agreement(reference: np.ndarray, candidate: np.ndarray, k: int) -> float:
    """Share of rows (last axis = classes) whose reference argmax is among the candidate's top ``k``."""
    classes = reference.shape[-1]
    ref = reference.reshape(-1, classes).argmax(axis=1)
    top = np.argpartition(-candidate.reshape(-1, classes), kth=min(k, classes) - 1, axis=1)[:, :k]
    return float(np.mean((top == ref[:, None]).any(axis=1)))


def _extras(ref: np.ndarray, cand: np.ndarray, diff: np.ndarray, tolerance: Tolerance | None) -> dict:
    """The optional :class:`OutputMetric` fields for a finite float output (see the module docstring)."""
    extras: dict = {"max_rel_error": max_relative_error(ref, diff), "cosine": mean_cosine(ref, cand)}
    if is_classifier_output(ref):
        extras["top1_agreement"] = argmax_agreement(ref, cand)
        if ref.shape[-1] >= 5:
            extras["top5_agreement"] = topk_agreement(ref, cand, 5)
    if tolerance is not None and tolerance.elementwise:
        allowed = (tolerance.atol or 0.0) + (tolerance.rtol or 0.0) * np.abs(ref.astype(np.float64))
        extras["outside_tolerance"] = float(np.mean(diff > allowed)) if diff.size else 0.0
    return extras


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    labels: np.ndarray | None = None, metric: MetricChoice = "auto",
                    tolerance: Tolerance | None = None) -> Comparison:
    """Compare candidate outputs with reference outputs (same names, same sample order)."""
    metrics = []
    samples = 0
    for name, ref in reference.items():
        if name not in candidate:
            raise KeyError(f"candidate model has no output '{name}'")
        cand = np.asarray(candidate[name])
        ref = np.asarray(ref)
        samples = len(ref) if ref.ndim else 1
        if ref.size == 0 or cand.size == 0:  # an empty output (a Shape of nothing): equal when both are empty
            same = float(ref.shape == cand.shape)
            metrics.append(OutputMetric(name, "cosine", same, 1.0, 0.0 if same else float("inf"), 0.0, True))
            continue
        if ref.dtype.kind not in "fc" or cand.dtype.kind not in "fc":
            # integer / boolean outputs (indices, masks): exact-match rate
            same = float(np.mean(ref == cand))
            diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
            outside = None
            if tolerance is not None and tolerance.elementwise:
                outside = float(np.mean(diff > (tolerance.atol or 0.0) + (tolerance.rtol or 0.0) * np.abs(ref.astype(np.float64))))
            metrics.append(OutputMetric(name, "top1-agreement", same, 1.0, float(np.max(diff, initial=0.0)),
                                        float(np.max(np.abs(ref), initial=0)), True,
                                        max_rel_error=max_relative_error(ref, diff), outside_tolerance=outside))
            continue
        finite = bool(np.isfinite(cand).all())
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(ref.astype(np.float64) - cand.astype(np.float64))
        max_err = float(np.nanmax(diff, initial=0.0)) if finite else float("inf")
        max_ref = float(np.max(np.abs(ref), initial=0.0))
        kind = metric_kind(name, reference, labels, metric)
        if not finite:
            metrics.append(OutputMetric(name, kind, 0.0, 1.0, max_err, max_ref, False))
            continue
        extras = _extras(ref, cand, diff, tolerance)
        if kind == "accuracy":
            ref_acc = float(np.mean(ref.argmax(axis=1) == labels))
            acc = float(np.mean(cand.argmax(axis=1) == labels))
            metrics.append(OutputMetric(name, kind, acc, ref_acc, max_err, max_ref, True, **extras))
        elif kind == "top1-agreement":
            metrics.append(OutputMetric(name, kind, argmax_agreement(ref, cand), 1.0, max_err, max_ref, True, **extras))
        elif kind == "ctc-text":
            metrics.append(OutputMetric(name, kind, ctc_text_match(ref, cand), 1.0, max_err, max_ref, True, **extras))
        else:
            metrics.append(OutputMetric(name, kind, extras["cosine"], 1.0, max_err, max_ref, True, **extras))
    return Comparison(tuple(metrics), samples)
