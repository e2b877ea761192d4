"""Interleaved timing: several engines measured round-robin in one run.

Every runner gets ``warmup`` untimed calls; then, round after round, each runner is timed once, in an
order that rotates every round (round ``r`` starts with runner ``r mod k``: A B C, B C A, C A B …), so
clock drift, thermal throttling and noisy neighbours hit all runners alike and no runner always
follows the same other one. Ratios of the resulting medians hold on a busy machine where absolute
numbers do not.

Calls far shorter than the timer's resolution and Python's call overhead can be timed in blocks:
with ``min_sample_s > 0`` every timed sample is ``repeat`` back-to-back calls divided by ``repeat``,
one ``repeat`` for all runners, chosen from the warm-up so that the fastest runner's block lasts about
``min_sample_s``. With ``min_sample_s = 0`` (the profiler's default) every sample is one call, so the
percentiles describe single iterations.

The clock is injectable (``clock=``) so the schedule and the arithmetic are testable with a fake one.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

Runner = Callable[[], object]


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds per call of every runner, in the order the rounds produced them."""

    seconds: dict[str, list[float]]
    rounds: int
    calls_per_sample: int
    warmup: int
    order: tuple[tuple[str, ...], ...] = ()
    """The order the runners ran in, round by round (kept for tests and reports)."""


def interleaved_timings(runners: dict[str, Runner], *, warmup: int = 5, iterations: int | None = None,
                        seconds: float | None = None, min_rounds: int = 3, min_sample_s: float = 0.0,
                        clock: Callable[[], float] = time.perf_counter) -> Timings:
    """Time every runner round-robin (see the module docstring).

    Stops after ``iterations`` rounds, or once ``seconds`` of timed rounds have passed (at least
    ``min_rounds`` rounds); exactly one of the two must be given.
    """
    if (iterations is None) == (seconds is None):
        raise ValueError("give exactly one of iterations or seconds")
    if iterations is not None and iterations < 1:
        raise ValueError(f"iterations must be ≥ 1, got {iterations}")
    if seconds is not None and seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not runners:
        raise ValueError("no runners to time")
    names = list(runners)
    fastest = math.inf
    for name in names:
        for _ in range(warmup):
            start = clock()
            runners[name]()
            fastest = min(fastest, clock() - start)
    repeat = 1
    if min_sample_s > 0:
        if not math.isfinite(fastest):  # no warm-up: measure one call of each to size the blocks
            for name in names:
                start = clock()
                runners[name]()
                fastest = min(fastest, clock() - start)
        repeat = max(1, math.ceil(min_sample_s / max(fastest, 1e-9)))
    timings: dict[str, list[float]] = {name: [] for name in names}
    order: list[tuple[str, ...]] = []
    started = clock()
    rounds = 0
    while True:
        if iterations is not None and rounds >= iterations:
            break
        if seconds is not None and rounds >= min_rounds and clock() - started >= seconds:
            break
        shift = rounds % len(names)
        this_round = tuple(names[shift:] + names[:shift])
        for name in this_round:
            runner = runners[name]
            start = clock()
            for _ in range(repeat):
                runner()
            timings[name].append((clock() - start) / repeat)
        order.append(this_round)
        rounds += 1
    return Timings(timings, rounds, repeat, warmup, tuple(order))
