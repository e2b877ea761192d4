"""Streaming int8 calibration: MinMax, Entropy (KL) and Percentile in bounded memory.

The model runs **once per batch**, augmented to output each tensor's min, max and strided sample
(:func:`graphopt.calibration.stream_summaries`); each tensor's batch is folded into a fixed-size
state and then dropped, so peak memory is one batch's activations (freed as the model runs) plus a
few KB per tensor, whatever the number of samples.

State per tensor (:class:`TensorHistogram`):

* ``min`` / ``max`` over everything seen (MinMax needs nothing else);
* a histogram of ``|x|`` with ``B`` bins of width ``w = 2**e`` covering ``[0, B·w)``. A value lands
  in bin ``floor(|x| / w)``. When a batch holds ``|x| ≥ B·w`` the exponent grows by ``k`` and bins
  are merged ``2**k`` at a time: ``floor(|x| / (w·2**k)) = floor(|x| / w) >> k`` exactly (scaling
  by a power of two is exact in floating point), so the streamed histogram **equals** the one-shot
  histogram of the concatenated data, and two histograms built on different batches merge exactly.

Histogram sampling: min/max see every value, but the histogram of a large tensor takes every
``k``-th value of each *sample*, ``k = ceil(M / V)`` for ``M`` values per sample and ``V`` wanted
(computed inside the model by the summary nodes, or fixed per tensor from its first batch when
:meth:`TensorHistogram.update` gets whole arrays). The stride runs within a sample, never across
the batch axis, so the sampled values — and the histogram — do not depend on how samples are
batched, and the streamed result still equals the one-shot one. ``V`` is fixed before the first
batch from the number of samples ``n`` (:func:`histogram_values_per_sample`): about
``HISTOGRAM_VALUES = 2**22`` values per tensor over the whole set, ``V = ceil(2**22 / n)`` kept
within ``[2**12, 2**15]``, so a 99.999 % percentile is resolved by ≥ 20 values (~42 from 128
samples on) while the work stops growing with ``n``. Counting every value of a 224×224 CNN's
activations costs as much as running the model.

Thresholds from the histogram (``t`` clips ``|x|``; the range is ``[max(min, -t), min(max, t)]``):

* **entropy** — TensorRT's KL calibration: for each candidate edge ``i`` (``i ≥ 128`` bins),
  ``P`` = the first ``i`` bins with the clipped tail added to the last one, ``Q`` = those bins
  merged into 128 levels and spread back evenly over their non-empty bins; ``t = i·w`` for the
  ``i`` minimising ``KL(P‖Q) = Σ P log(P/Q)``.
* **percentile** — the smallest edge whose cumulative share of ``|x|`` reaches ``p`` %.

"Settled" check: a snapshot of every state is taken once 75 % of the samples have been folded in;
the move of each tensor's range between the snapshot and the end, relative to the final range
width, tells whether more data would still change the ranges.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.calibration import TensorSummary, stream_summaries
from graphopt.data import DataSet, input_specs
from graphopt.verify import sqnr_db

CalibMethod = Literal["minmax", "entropy", "percentile"]
CALIB_METHODS: tuple[str, ...] = ("minmax", "entropy", "percentile")
DEFAULT_BINS = 2048
QUANTIZED_LEVELS = 128
"""Levels one side of a symmetric int8 range has; the KL search compares against 128 merged bins."""
KL_COARSE_CANDIDATES = 64
"""Entropy search: candidate edges first spread evenly over the non-empty histogram, then every
``step/16``-th edge within one coarse step of the best (about 100 KL evaluations per tensor)."""
SETTLE_FRACTION = 0.25
"""The settled check compares the ranges after the first 75 % of samples with the final ones."""
UNSETTLED_MOVE = 0.10
"""Warn when some tensor's range moved by more than this fraction over the last 25 % of samples."""
MIN_SAMPLES = 32
HISTOGRAM_VALUES = 2**22
"""Values per tensor the histograms aim at over the whole calibration set (see "Histogram sampling")."""
HISTOGRAM_VALUES_PER_SAMPLE = 2**15
"""Most values of one sample that go into a tensor's histogram."""
MIN_HISTOGRAM_VALUES_PER_SAMPLE = 2**12
"""Fewest values of one sample that go into a tensor's histogram."""


def histogram_values_per_sample(samples: int) -> int:
    """``V`` for ``samples`` calibration samples: ``ceil(HISTOGRAM_VALUES / samples)`` within
    ``[MIN_HISTOGRAM_VALUES_PER_SAMPLE, HISTOGRAM_VALUES_PER_SAMPLE]``."""
    wanted = -(-HISTOGRAM_VALUES // max(samples, 1))
    return int(min(HISTOGRAM_VALUES_PER_SAMPLE, max(MIN_HISTOGRAM_VALUES_PER_SAMPLE, wanted)))


@dataclasses.dataclass
class TensorHistogram:
    """Running min, max and power-of-two-grid histogram of ``|x|`` for one tensor."""

    bins: int = DEFAULT_BINS
    min: float = float("inf")
    max: float = float("-inf")
    exponent: int | None = None
    """Bin width is ``2**exponent``; ``None`` until a non-zero value has been seen."""
    counts: np.ndarray | None = None
    zeros: int = 0
    """Values seen while every value so far was 0 (they go to bin 0 once the grid exists)."""
    collect_histogram: bool = True
    stride: int | None = None
    """Every ``stride``-th value of each sample feeds the histogram; fixed by the first batch."""
    values_per_sample: int = HISTOGRAM_VALUES_PER_SAMPLE
    """``V`` (see "Histogram sampling"): ``stride = ceil(values per sample / V)``."""

    @property
    def width(self) -> float:
        return float(2.0**self.exponent) if self.exponent is not None else 0.0

    def update(self, array: np.ndarray) -> None:
        """Fold one batch of values in."""
        if array.size == 0:
            return
        values = np.asarray(array)
        if values.dtype != np.float32:
            values = values.astype(np.float32)
        sampled = None
        if self.collect_histogram:
            per_sample = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
            if self.stride is None:
                self.stride = max(1, -(-per_sample.shape[1] // self.values_per_sample))
            sampled = per_sample[:, :: self.stride]
        self._fold_in(float(values.min()), float(values.max()), sampled)

    def update_summary(self, summary: TensorSummary) -> None:
        """Fold in one batch summarised inside the model (the same values :meth:`update` would take)."""
        sampled = summary.sampled
        if self.collect_histogram and sampled is None:
            raise ValueError("a histogram needs the summary's sampled values")
        if sampled is not None and sampled.dtype != np.float32:
            sampled = sampled.astype(np.float32)
        self._fold_in(summary.min, summary.max, sampled if self.collect_histogram else None)

    def _fold_in(self, low: float, high: float, sampled: np.ndarray | None) -> None:
        self.min, self.max = min(self.min, low), max(self.max, high)
        if sampled is None:
            return
        peak = max(-low, high)
        if peak == 0.0:
            if self.counts is None:
                self.zeros += sampled.size
            else:
                self.counts[0] += sampled.size
            return
        self._grow_to(peak)
        scaled = np.abs(sampled).reshape(-1)
        scaled *= np.float32(2.0 ** -self.exponent)  # exact: power-of-two scaling
        index = scaled.astype(np.intp)  # floor for non-negative values; intp spares bincount a cast
        self.counts += np.bincount(index, minlength=self.bins)

    def merge(self, other: TensorHistogram) -> None:
        """Add ``other`` (built on different samples) into this state; exact (see module docstring)."""
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        if not self.collect_histogram:
            return
        if other.counts is None:
            if self.counts is None:
                self.zeros += other.zeros
            else:
                self.counts[0] += other.zeros
            return
        incoming = other.counts.copy()
        if self.counts is None:
            self.exponent, self.counts = other.exponent, incoming
            self.counts[0] += self.zeros
            self.zeros = 0
            return
        if other.exponent > self.exponent:
            self._rescale(other.exponent - self.exponent)
        elif other.exponent < self.exponent:
            incoming = _fold(incoming, self.exponent - other.exponent)
        self.counts += incoming

    def _grow_to(self, peak: float) -> None:
        needed = _exponent_for(peak, self.bins)
        if self.counts is None:
            self.exponent = needed
            self.counts = np.zeros(self.bins, dtype=np.int64)
            self.counts[0] += self.zeros
            self.zeros = 0
        elif needed > self.exponent:
            self._rescale(needed - self.exponent)

    def _rescale(self, steps: int) -> None:
        self.counts = _fold(self.counts, steps)
        self.exponent += steps

    # -- thresholds ---------------------------------------------------------------------------

    def threshold(self, method: CalibMethod, percentile: float = 99.999) -> float:
        """The clipping threshold ``t`` on ``|x|`` (``max |x|`` for minmax)."""
        peak = max(-self.min, self.max, 0.0)
        if method == "minmax" or self.counts is None or peak == 0.0:
            return peak
        if method == "percentile":
            return min(peak, percentile_threshold(self.counts, self.width, percentile))
        return min(peak, entropy_threshold(self.counts, self.width))

    def sqnr_db(self, low: float, high: float, *, symmetric: bool = False) -> float | None:
        """Signal-to-quantization-noise ratio (dB) of 8-bit quantization on ``[low, high]``.

        ``10·log10(E[x²] / (s²/12))`` with ``s = (high − low)/255`` (asymmetric) or
        ``max(|low|, |high|)/127`` (symmetric) and ``E[x²]`` from the ``|x|`` histogram (bin centres).
        Rounding noise of a step ``s`` has power ``s²/12``; clipping noise is not counted (it is the
        calibration method's choice). ``None`` without a histogram or for an all-zero tensor.
        """
        if self.counts is None or self.counts.sum() == 0:
            return None
        step = max(abs(low), abs(high)) / 127.0 if symmetric else (high - low) / 255.0
        centres = (np.arange(len(self.counts)) + 0.5) * self.width
        power = float((self.counts * centres**2).sum() / self.counts.sum())
        if step <= 0.0 or power <= 0.0:
            return None
        return sqnr_db(power, step * step / 12.0)

    def range(self, method: CalibMethod, percentile: float = 99.999) -> tuple[float, float]:
        """``(low, high)`` to quantize this tensor with."""
        if self.min > self.max:
            return 0.0, 0.0
        if method == "minmax":
            return self.min, self.max
        t = self.threshold(method, percentile)
        return max(self.min, -t), min(self.max, t)


def _exponent_for(peak: float, bins: int) -> int:
    """Smallest ``e`` with ``peak < bins · 2**e``."""
    exponent = int(np.ceil(np.log2(peak / bins)))
    while peak >= bins * 2.0**exponent:
        exponent += 1
    while peak < bins * 2.0 ** (exponent - 1):
        exponent -= 1
    return exponent


def _fold(counts: np.ndarray, steps: int) -> np.ndarray:
    """Merge bins ``2**steps`` at a time, keeping the bin count (upper bins become empty)."""
    index = np.arange(len(counts)) >> steps
    return np.bincount(index, weights=counts, minlength=len(counts)).astype(np.int64)


def percentile_threshold(counts: np.ndarray, width: float, percentile: float) -> float:
    """Smallest bin edge ``i·w`` whose cumulative share of the counts reaches ``percentile`` %."""
    total = counts.sum()
    if total == 0:
        return 0.0
    cdf = np.cumsum(counts) / total
    index = int(np.searchsorted(cdf, percentile / 100.0, side="left"))
    return (min(index, len(counts) - 1) + 1) * width


def entropy_threshold(counts: np.ndarray, width: float, levels: int = QUANTIZED_LEVELS) -> float:
    """TensorRT's KL-divergence threshold on a ``|x|`` histogram (see the module docstring)."""
    nonzero = np.nonzero(counts)[0]
    if len(nonzero) == 0:
        return 0.0
    last = int(nonzero[-1]) + 1
    if last <= levels:
        return last * width
    hist = counts[:last].astype(np.float64)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = sum(hist[i:])
    step = max(1, (last - levels) // KL_COARSE_CANDIDATES)
    best_i, best_kl = _best_edge(hist, tail, levels, range(levels, last + 1, step), last)
    if step > 1:
        fine = range(max(levels, best_i - step), min(last, best_i + step) + 1, max(1, step // 16))
        fine_i, fine_kl = _best_edge(hist, tail, levels, fine, None)
        if fine_kl < best_kl:
            best_i = fine_i
    return best_i * width


def _best_edge(hist: np.ndarray, tail: np.ndarray, levels: int, edges: range, last: int | None) -> tuple[int, float]:
    """The edge with the smallest KL among ``edges`` (plus ``last`` when given)."""
    candidates = list(edges)
    if last is not None and candidates[-1] != last:
        candidates.append(last)
    best_i, best_kl = candidates[-1], np.inf
    for i in candidates:
        kl = _kl_for_edge(hist, tail, i, levels)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i, best_kl


def _kl_for_edge(hist: np.ndarray, tail: np.ndarray, i: int, levels: int) -> float:
    sliced = hist[:i]
    p = sliced.copy()
    p[-1] += tail[i]
    present = sliced != 0
    group = (np.arange(i) * levels) // i
    sums = np.bincount(group, weights=sliced, minlength=levels)
    filled = np.bincount(group, weights=present, minlength=levels)
    per_bin = np.divide(sums, filled, out=np.zeros(levels), where=filled > 0)
    q = np.where(present, per_bin[group], 0.0)
    p_total, q_total = p.sum(), q.sum()
    if p_total == 0 or q_total == 0:
        return np.inf
    p, q = p / p_total, q / q_total
    mask = p > 0
    if np.any(q[mask] == 0):  # only the last bin can be non-empty in P and empty in Q
        q = np.where(mask & (q == 0), 1e-12, q)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


@dataclasses.dataclass
class SettleReport:
    """How much the ranges moved over the last part of the calibration data."""

    checked: bool
    max_move: float = 0.0
    median_move: float = 0.0
    worst_tensor: str | None = None

    @property
    def settled(self) -> bool:
        return not self.checked or self.max_move <= UNSETTLED_MOVE

    def describe(self) -> str:
        if not self.checked:
            return "not measured (a single calibration batch)"
        return (f"ranges moved by at most {100 * self.max_move:.1f}% (median {100 * self.median_move:.2f}%) "
                f"over the last {int(100 * SETTLE_FRACTION)}% of the calibration data"
                + (f"; most: '{self.worst_tensor}'" if self.worst_tensor and self.max_move > 0 else ""))


@dataclasses.dataclass
class CalibrationResult:
    ranges: dict[str, tuple[float, float]]
    method: str
    samples: int
    batches: int
    settle: SettleReport
    sqnr_db: dict[str, float] = dataclasses.field(default_factory=dict)
    """8-bit SQNR per tensor at its range (only with histograms, see :meth:`TensorHistogram.sqnr_db`)."""
    states: dict[str, TensorHistogram] = dataclasses.field(default_factory=dict)
    """The streamed state (min, max, ``|x|`` histogram) of every tensor, for choices made after calibration
    (:mod:`graphopt.passes.int8.methods.range_choice`)."""
    symmetric: bool = False

    def with_ranges(self, ranges: dict[str, tuple[float, float]]) -> CalibrationResult:
        """This result with ``ranges`` (and the SQNR recomputed at them)."""
        sqnr = {}
        for name, state in self.states.items():
            if name in ranges:
                value = state.sqnr_db(*ranges[name], symmetric=self.symmetric)
                if value is not None:
                    sqnr[name] = value
        return dataclasses.replace(self, ranges=ranges, sqnr_db=sqnr if self.states else self.sqnr_db)


class RangeCollector:
    """Streaming state of every observed tensor; ``update`` folds one batch in."""

    def __init__(self, method: CalibMethod, bins: int = DEFAULT_BINS, percentile: float = 99.999,
                 histograms: bool | None = None, values_per_sample: int = HISTOGRAM_VALUES_PER_SAMPLE) -> None:
        if method not in CALIB_METHODS:
            raise ValueError(f"unknown calibration method {method!r}; choose one of {', '.join(CALIB_METHODS)}")
        self.method = method
        self.bins = bins
        self.percentile = percentile
        self.histograms = method != "minmax" if histograms is None else histograms
        self.values_per_sample = values_per_sample
        self.states: dict[str, TensorHistogram] = {}

    def update(self, batch: Mapping[str, np.ndarray | TensorSummary]) -> None:
        for name, value in batch.items():
            summary = isinstance(value, TensorSummary)
            if not summary and value.dtype.kind != "f":
                continue
            state = self.states.get(name)
            if state is None:
                state = self.states[name] = TensorHistogram(self.bins, collect_histogram=self.histograms,
                                                            values_per_sample=self.values_per_sample)
            if summary:
                state.update_summary(value)
            else:
                state.update(value)

    def merge(self, other: RangeCollector) -> None:
        for name, state in other.states.items():
            if name in self.states:
                self.states[name].merge(state)
            else:
                self.states[name] = copy.deepcopy(state)

    def snapshot(self) -> RangeCollector:
        return copy.deepcopy(self)

    def ranges(self) -> dict[str, tuple[float, float]]:
        return {name: state.range(self.method, self.percentile) for name, state in self.states.items()}

    def sqnr_db(self, ranges: dict[str, tuple[float, float]], *, symmetric: bool = False) -> dict[str, float]:
        """:meth:`TensorHistogram.sqnr_db` of every tensor with a histogram, at its range in ``ranges``."""
        found = {}
        for name, state in self.states.items():
            if name in ranges:
                value = state.sqnr_db(*ranges[name], symmetric=symmetric)
                if value is not None:
                    found[name] = value
        return found


def settle_report(before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]) -> SettleReport:
    """Move of each range, ``(|Δlow| + |Δhigh|) / (high − low)``, summarised over tensors."""
    moves: dict[str, float] = {}
    for name, (low, high) in after.items():
        if name not in before:
            continue
        width = high - low
        if width <= 0:
            continue
        old_low, old_high = before[name]
        moves[name] = (abs(low - old_low) + abs(high - old_high)) / width
    if not moves:
        return SettleReport(checked=False)
    worst = max(moves, key=moves.__getitem__)
    return SettleReport(True, moves[worst], float(np.median(list(moves.values()))), worst)


def calibrate(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str],
              method: CalibMethod, *, batch_size: int = 8, percentile: float = 99.999,
              bins: int = DEFAULT_BINS, histograms: bool | None = None,
              symmetric: bool = False) -> CalibrationResult:
    """Ranges of ``tensor_names`` over ``data`` with one model run per batch (see module docstring).

    ``histograms`` (default: every method but minmax) also gives each tensor's 8-bit SQNR at its
    range (``symmetric`` or asymmetric quantization)."""
    total = len(data)
    collector = RangeCollector(method, bins, percentile, histograms, histogram_values_per_sample(total))
    graph_model = model if isinstance(model, ir.Model) else ir.from_proto(model)
    per_batch = data.batch_size_for(input_specs(graph_model), batch_size)
    seen = 0
    snapshot: list[RangeCollector] = []

    def consume(batch: dict[str, np.ndarray | TensorSummary]) -> None:
        nonlocal seen
        if not snapshot and seen >= (1.0 - SETTLE_FRACTION) * total and seen > 0:
            snapshot.append(collector.snapshot())
        collector.update(batch)
        seen = min(seen + per_batch, total)

    batches = stream_summaries(model, data, list(tensor_names), consume, batch_size=batch_size,
                               values_per_sample=collector.values_per_sample if collector.histograms else None,
                               description=f"calibrating ({method})")
    final = collector.ranges()
    settle = settle_report(snapshot[0].ranges(), final) if snapshot else SettleReport(False)
    return CalibrationResult(final, method, total, batches, settle, collector.sqnr_db(final, symmetric=symmetric),
                             collector.states, symmetric)
