"""Measurement helpers for ``tools/bench.py``: latency, quality against the fp32 model, graph facts, tables.

Rules the numbers follow:

* **Latency** is measured side by side: every session of one model gets ``warmup`` untimed runs, then
  ``runs`` rounds in which each session runs once, in an order that rotates every round, so that clock
  drift, thermal throttling and noisy neighbours hit all variants alike. The reported value is the
  median of a session's ``runs`` timings; ratios are taken to the fp32 model measured in the same rounds.
  Sessions are built without spin-waiting threads (``graphopt.engines.ort.session_options``): with it,
  the idle workers of the session that just ran take the two cores from the next one (≈3× slower,
  far noisier timings).
* **Quality** is judged against the fp32 model's outputs on the eval data, by the model's registry
  ``check``: ``top1-labels`` — accuracy of the classifier output against the labels (drop in points);
  ``cosine`` — the lowest, over float outputs, of the mean per-sample cosine similarity
  (:func:`graphopt.verify.mean_cosine`); ``argmax-agreement`` — the lowest, over float outputs, of the
  share of argmaxes over the last axis that agree with fp32 (:func:`argmax_agreement`; for a classifier
  (N, C) that is the per-sample top-1 agreement, for a sequence (N, T, C) it is per position; a
  sequence output also records the share of samples whose greedy CTC decoding matches fp32,
  :func:`graphopt.verify.ctc_text_match`, shown as "text" in the table). A variant with any
  non-finite output scores NaN.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from graphopt import verify
from graphopt.inspection import op_histogram
from graphopt.profiling.stats import median_ms  # noqa: F401 - re-exported for tools/bench.py
from graphopt.profiling.timing import interleaved_timings
from graphopt.verify import compare_outputs, mean_cosine

CHECKS = ("top1-labels", "cosine", "argmax-agreement")


# --------------------------------------------------------------------------------------------- latency
def interleaved_latency(runners: dict[str, Callable[[], object]], runs: int = 20, warmup: int = 5,
                        min_sample_s: float = 0.002) -> dict[str, list[float]]:
    """Seconds per call of every runner, measured round-robin by graphopt's profiler
    (:func:`graphopt.profiling.timing.interleaved_timings`: rotating order, calls shorter than the timer's
    resolution timed in blocks of about ``min_sample_s``) — the code ``graphopt profile`` and the latency
    rows of ``graphopt optimize`` use."""
    return interleaved_timings(runners, warmup=max(warmup, 1), iterations=runs, min_sample_s=min_sample_s).seconds


# --------------------------------------------------------------------------------------------- quality
def argmax_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Share of positions whose argmax over the last axis is the same in both arrays.

    Every axis but the last indexes a position: (N, C) gives N decisions, (N, T, C) gives N·T. Ties are
    broken by numpy's first-index rule in both arrays alike.
    """
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: reference {reference.shape}, candidate {candidate.shape}")
    if reference.ndim == 0 or reference.shape[-1] < 2:
        raise ValueError(f"argmax agreement needs a last axis with ≥ 2 classes, got shape {reference.shape}")
    return verify.argmax_agreement(reference, candidate)


@dataclasses.dataclass(frozen=True)
class Quality:
    """How a variant's outputs compare with the fp32 model's on the eval data."""

    metric: str
    """``accuracy`` | ``cosine`` | ``argmax-agreement``."""
    value: float
    """Accuracy / agreement as a fraction, or the mean cosine; NaN when an output is not finite."""
    reference: float
    """The fp32 model's own value (its accuracy; 1.0 for agreement and cosine)."""
    finite: bool
    max_abs_error: float
    relative_error: float
    """max |fp32 − variant| / max |fp32| over all float outputs."""
    per_output: dict[str, dict]

    @property
    def drop_points(self) -> float:
        """Quality lost, in percentage points (100 when outputs are not finite)."""
        if not self.finite:
            return 100.0
        return 100.0 * (self.reference - self.value)

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "drop_points": self.drop_points}


def measure_quality(check: str, reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    labels: np.ndarray | None = None) -> Quality:
    """Score ``candidate`` outputs against ``reference`` outputs (same names, same samples) by ``check``."""
    if check not in CHECKS:
        raise ValueError(f"unknown check {check!r}; known: {', '.join(CHECKS)}")
    missing = sorted(set(reference) - set(candidate))
    if missing:
        raise ValueError(f"variant lacks output(s) {missing}")
    candidate = {name: np.asarray(candidate[name]) for name in reference}
    float_names = [n for n, a in reference.items() if np.asarray(a).dtype.kind == "f"]
    finite = all(np.isfinite(candidate[n].astype(np.float64)).all() for n in float_names)
    comparison = compare_outputs(reference, {n: _as_float32(a) for n, a in candidate.items()},
                                 labels if check == "top1-labels" else None)
    per_output = {m.output: m.to_dict() for m in comparison.metrics}
    max_abs = max((m.max_abs_error for m in comparison.metrics), default=0.0)
    max_ref = max((m.max_abs_reference for m in comparison.metrics), default=0.0)
    relative = max_abs / max(max_ref, 1e-12)
    if not finite:
        metric = {"top1-labels": "accuracy", "cosine": "cosine", "argmax-agreement": "argmax-agreement"}[check]
        return Quality(metric, math.nan, _reference_value(check, reference, labels), False, math.inf, math.inf, per_output)
    if check == "top1-labels":
        accuracy = [m for m in comparison.metrics if m.kind == "accuracy"]
        if not accuracy:
            raise ValueError("check top1-labels needs eval labels and exactly one classifier output (N, C)")
        m = accuracy[0]
        return Quality("accuracy", m.value, m.reference_value, True, max_abs, relative, per_output)
    if check == "cosine":
        cosines = {n: mean_cosine(reference[n], _as_float32(candidate[n])) for n in float_names}
        if not cosines:
            raise ValueError("check cosine needs at least one float output")
        for name, value in cosines.items():
            per_output[name]["cosine"] = value
        return Quality("cosine", min(cosines.values()), 1.0, True, max_abs, relative, per_output)
    agreements = {}
    for name in float_names:
        if reference[name].ndim >= 2 and reference[name].shape[-1] > 1:
            agreements[name] = argmax_agreement(reference[name], candidate[name])
            per_output[name]["argmax_agreement"] = agreements[name]
            if reference[name].ndim == 3:
                per_output[name]["ctc_text_match"] = verify.ctc_text_match(reference[name], candidate[name])
    if not agreements:
        raise ValueError("check argmax-agreement needs a float output whose last axis has ≥ 2 classes")
    return Quality("argmax-agreement", min(agreements.values()), 1.0, True, max_abs, relative, per_output)


def _reference_value(check: str, reference: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
    if check == "top1-labels" and labels is not None:
        for array in reference.values():
            if array.ndim == 2 and array.shape[1] > 1 and len(array) == len(labels):
                return float(np.mean(array.argmax(axis=1) == labels))
    return 1.0


def _as_float32(array: np.ndarray) -> np.ndarray:
    """fp16 / bf16-typed outputs compared in float32 (numpy has no bf16; ORT returns it as uint16 only
    for models whose outputs are bf16, which keep-io-types conversions avoid)."""
    return array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float32 else array


# --------------------------------------------------------------------------------------------- graph facts
@dataclasses.dataclass(frozen=True)
class GraphFacts:
    """What a model file holds: bytes on disk (with external data), nodes and Cast nodes (subgraphs included)."""

    file_bytes: int
    nodes: int
    casts: int
    op_counts: dict[str, int]


def graph_facts(path: str | Path) -> GraphFacts:
    path = Path(path)
    proto = onnx.load(str(path), load_external_data=False)
    counts = op_histogram(ir.from_proto(proto))
    external = {entry.value for init in proto.graph.initializer for entry in init.external_data if entry.key == "location"}
    size = path.stat().st_size + sum((path.parent / name).stat().st_size for name in external
                                     if (path.parent / name).is_file())
    return GraphFacts(size, sum(counts.values()), counts.get("Cast", 0), dict(sorted(counts.items())))


# --------------------------------------------------------------------------------------------- feeds
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def feeds_for(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` cast to the element types the session's inputs declare (an fp16 model without
    keep-io-types takes float16 inputs); raises ``ValueError`` for an input numpy cannot produce."""
    out = {}
    for spec in session.get_inputs():
        if spec.name not in feeds:
            raise ValueError(f"no data for model input '{spec.name}'")
        dtype = _ORT_TO_NUMPY.get(spec.type)
        if dtype is None:
            raise ValueError(f"model input '{spec.name}' has type {spec.type}, which numpy cannot feed")
        out[spec.name] = np.ascontiguousarray(feeds[spec.name], dtype=dtype)
    return out


# --------------------------------------------------------------------------------------------- tables
def format_number(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return f"{value:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table; numeric-looking columns are right-aligned."""
    def numeric(column: int) -> bool:
        cells = [r[column] for r in rows if r[column] not in ("", "–")]
        return bool(cells) and all(_looks_numeric(c) for c in cells)

    align = ["---:" if numeric(i) else "---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    text = cell.rstrip("%×x").replace(",", "")
    if text == "NaN":
        return True
    try:
        float(text)
    except ValueError:
        return False
    return True
