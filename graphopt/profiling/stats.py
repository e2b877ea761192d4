"""Summary statistics of per-iteration latencies.

Definitions (all in milliseconds, from the seconds each timed sample took):

* percentiles ``p50 p90 p95 p99`` use linear interpolation between order statistics (numpy's
  default, Hyndman–Fan type 7), so ``p50`` is the median as :func:`statistics.median` gives it
  (the mean of the two middle samples for an even count);
* ``std`` is the sample standard deviation (``ddof=1``; 0 for a single sample);
* ``throughput`` = ``batch`` samples per iteration / mean latency, in samples per second — the
  mean, not the median, because total work over total time is what sustained throughput is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Latency summary of one engine at one batch size."""

    samples: int
    batch: int
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float
    """Samples (batch items) per second."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def summarize(seconds: Sequence[float], batch: int = 1) -> LatencyStats:
    """Statistics of per-iteration latencies given in seconds (see the module docstring)."""
    if len(seconds) == 0:
        raise ValueError("no timings to summarize")
    if batch < 1:
        raise ValueError(f"batch must be ≥ 1, got {batch}")
    ms = 1e3 * np.asarray(seconds, dtype=np.float64)
    p50, p90, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
    mean = float(ms.mean())
    std = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
    throughput = batch * 1e3 / mean if mean > 0 else float("inf")
    return LatencyStats(len(ms), batch, mean, std, p50, p90, p95, p99, float(ms.min()), float(ms.max()), throughput)


def median_ms(seconds: Sequence[float]) -> float:
    """The median of latencies given in seconds, in milliseconds (``summarize(...).p50_ms``)."""
    return summarize(seconds).p50_ms
