"""Per-tensor choice of the activation clipping range by its measured quantization error.

TensorRT and onnxruntime calibrate a whole model with one method; which one is best differs between the
tensors of one model (a post-ReLU map with a long thin tail wants a clipped range, a bounded one wants its
full range). Here each tensor gets the candidate range whose 8-bit quantization makes the smallest error
on its own calibration data.

Candidates, each a threshold ``t`` on ``|x|`` (range ``[max(min, −t), min(max, t)]``, widened to hold 0,
as :meth:`TensorHistogram.range`): ``minmax`` (``t = max|x|``), ``percentile`` at :data:`PERCENTILES`,
``entropy`` (TensorRT's KL threshold) and ``mse``, the threshold minimising the classic uniform-noise
model of the error over every histogram edge (Banner et al., ACIQ):

    E_model(t) = Σ_{|x|≤t} s(t)²/12 + Σ_{|x|>t} (|x| − t)²

Judge (:func:`expected_error`): the expected squared error per value, from the calibration histogram of
``|x|`` (bounded memory, as calibration keeps it), with a refined rounding term — a value closer to 0 than
half a step rounds to the exactly representable 0, so its error is ``x²``, not ``s²/12``:

    E(t) = Σ_k c_k · [ |x_k| ≤ t ] · min(x_k², s²/12)  +  Σ_k c_k · [ |x_k| > t ] · (|x_k| − t)²

over the bins ``k`` (centres ``x_k``, counts ``c_k``); ``s = (hi − lo)/255`` for asymmetric uint8
activations, ``max(|lo|, |hi|)/127`` for symmetric int8. Clipping by ``|x|`` is exact: a negative value
beyond ``t`` exists only when ``min < −t``, and then the range's low end is ``−t``. The chosen candidate is
the one with the smallest ``E``; the report gives each tensor's SQNR, ``10·log10(E[x²]/E)``, at the
calibration method's range and at the chosen one.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Mapping

import numpy as np

from graphopt.passes.int8.calibration import TensorHistogram, entropy_threshold, percentile_threshold
from graphopt.verify import sqnr_db

PERCENTILES = (99.9, 99.99, 99.999)


@dataclasses.dataclass(frozen=True)
class Choice:
    tensor: str
    candidate: str
    range: tuple[float, float]
    sqnr_before_db: float
    sqnr_after_db: float


def _range_for(state: TensorHistogram, t: float) -> tuple[float, float]:
    return max(state.min, -t), min(state.max, t)


def _step(low: float, high: float, symmetric: bool) -> float:
    low, high = min(low, 0.0), max(high, 0.0)
    return max(abs(low), abs(high)) / 127.0 if symmetric else (high - low) / 255.0


def expected_error(state: TensorHistogram, low: float, high: float, *, symmetric: bool) -> float:
    """``E`` (module docstring) per value for quantizing ``state``'s tensor on ``[low, high]``."""
    counts = state.counts.astype(np.float64)
    centres = (np.arange(len(counts)) + 0.5) * state.width
    t = max(-min(low, 0.0), max(high, 0.0))
    inside = centres <= t
    rounding = np.minimum(centres**2, _step(low, high, symmetric) ** 2 / 12.0)
    clipping = (centres - t) ** 2
    return float((counts * np.where(inside, rounding, clipping)).sum() / counts.sum())


def mse_threshold(state: TensorHistogram, *, symmetric: bool) -> float:
    """The bin edge minimising the uniform-noise model ``E_model`` (module docstring), found with cumulative
    sums over the histogram in ``O(bins)``."""
    counts = state.counts.astype(np.float64)
    width = state.width
    last = int(np.nonzero(counts)[0][-1]) + 1
    counts = counts[:last]
    centres = (np.arange(last) + 0.5) * width
    edges = (np.arange(last) + 1) * width  # t_j = (j + 1)·w keeps bins 0..j inside
    inside = np.cumsum(counts)
    tail_n = inside[-1] - inside
    tail_s1 = np.cumsum((counts * centres)[::-1])[::-1]
    tail_s2 = np.cumsum((counts * centres**2)[::-1])[::-1]
    tail_s1 = np.append(tail_s1[1:], 0.0)  # sums over k > j
    tail_s2 = np.append(tail_s2[1:], 0.0)
    clip = tail_s2 - 2 * edges * tail_s1 + edges**2 * tail_n
    low = np.minimum(np.maximum(state.min, -edges), 0.0)
    high = np.maximum(np.minimum(state.max, edges), 0.0)
    steps = np.maximum(-low, high) / 127.0 if symmetric else (high - low) / 255.0
    model = inside * steps**2 / 12.0 + clip
    return float(edges[int(np.argmin(model))])


def candidates(state: TensorHistogram, *, symmetric: bool) -> dict[str, float]:
    """Candidate thresholds on ``|x|`` (module docstring), each at most ``max|x|``."""
    peak = max(-state.min, state.max, 0.0)
    found = {"minmax": peak}
    for p in PERCENTILES:
        found[f"percentile {p:g}"] = min(peak, percentile_threshold(state.counts, state.width, p))
    found["entropy"] = min(peak, entropy_threshold(state.counts, state.width))
    found["mse"] = min(peak, mse_threshold(state, symmetric=symmetric))
    return found


def _sqnr_db(state: TensorHistogram, error: float) -> float:
    counts = state.counts.astype(np.float64)
    centres = (np.arange(len(counts)) + 0.5) * state.width
    power = float((counts * centres**2).sum() / counts.sum())
    return float("inf") if power <= 0.0 else sqnr_db(power, error)


def choose_ranges(states: Mapping[str, TensorHistogram], ranges: Mapping[str, tuple[float, float]], *,
                  symmetric: bool) -> tuple[dict[str, tuple[float, float]], list[Choice]]:
    """``ranges`` with each tensor that has a histogram moved to its best candidate; one :class:`Choice` per
    tensor judged (tensors without a histogram or all zero keep their range)."""
    chosen = dict(ranges)
    rows: list[Choice] = []
    for name, current in ranges.items():
        state = states.get(name)
        if state is None or state.counts is None or state.counts.sum() == 0 or state.min > state.max:
            continue
        before = expected_error(state, *current, symmetric=symmetric)
        best_name, best_range, best_error = "calibration", current, before
        for label, t in candidates(state, symmetric=symmetric).items():
            low, high = _range_for(state, t)
            error = expected_error(state, low, high, symmetric=symmetric)
            if error < best_error * (1 - 1e-9):
                best_name, best_range, best_error = label, (low, high), error
        chosen[name] = best_range
        rows.append(Choice(name, best_name, best_range, _sqnr_db(state, before), _sqnr_db(state, best_error)))
    return chosen, rows


def report(rows: list[Choice]) -> dict:
    """The ``stats["methods"]`` entry: which candidate won how often, and each tensor's SQNR before/after."""
    wins = Counter(row.candidate for row in rows)
    moved = [row for row in rows if row.candidate != "calibration"]
    gains = [row.sqnr_after_db - row.sqnr_before_db for row in moved if np.isfinite(row.sqnr_after_db)]
    changed = (f"{len(moved)} of {len(rows)} activation range(s) replaced by a lower-error candidate ("
               + ", ".join(f"{name} {count}" for name, count in wins.most_common()) + ")"
               + (f"; tensor SQNR +{np.median(gains):.1f} dB median, +{max(gains):.1f} dB most" if gains else ""))
    return {"method": "range-choice", "changed": changed if rows else "no calibrated histogram to judge",
            "layers": [{"name": row.tensor, "candidate": row.candidate,
                        "sqnr_before_db": round(row.sqnr_before_db, 2), "sqnr_after_db": round(row.sqnr_after_db, 2)}
                       for row in rows]}
