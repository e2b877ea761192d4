"""The profiler: statistics on a fake clock, interleaving order, budgets, and a real interleaved profile."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from graphopt.errors import InputError
from graphopt.profiling.feeds import make_feeds
from graphopt.profiling.profiler import ProfileOptions, default_threads, profile_engines
from graphopt.profiling.stats import median_ms, summarize
from graphopt.profiling.timing import interleaved_timings
from tests.conftest import conv_bn_model
from tools.bench_lib import interleaved_latency


class FakeClock:
    """A clock that only moves when a runner says how long it took."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, seconds: float, log: list | None = None, name: str = ""):
        def run() -> None:
            self.now += seconds
            if log is not None:
                log.append(name)
        return run


def test_summary_statistics_of_known_timings():
    seconds = [0.001, 0.002, 0.003, 0.004, 0.010]  # ms: 1 2 3 4 10
    stats = summarize(seconds, batch=4)
    assert stats.samples == 5 and stats.batch == 4
    assert stats.p50_ms == pytest.approx(3.0) and stats.min_ms == pytest.approx(1.0) and stats.max_ms == pytest.approx(10.0)
    assert stats.mean_ms == pytest.approx(4.0)
    assert stats.std_ms == pytest.approx(np.std([1, 2, 3, 4, 10], ddof=1))
    assert stats.p90_ms == pytest.approx(4 + 0.6 * 6)  # linear interpolation between 4 and 10
    assert stats.p99_ms == pytest.approx(4 + 0.96 * 6)
    assert stats.throughput == pytest.approx(4 * 1000 / 4.0)  # batch / mean
    assert median_ms([0.001, 0.003]) == pytest.approx(2.0)  # even count: mean of the middle two
    assert summarize([0.002]).std_ms == 0.0
    with pytest.raises(ValueError):
        summarize([])


def test_interleaving_rotates_and_times_each_runner_exactly():
    clock, order = FakeClock(), []
    runners = {name: clock.runner(cost, order, name) for name, cost in (("a", 0.001), ("b", 0.002), ("c", 0.004))}
    timings = interleaved_timings(runners, warmup=2, iterations=4, clock=clock)
    assert order[:6] == ["a", "a", "b", "b", "c", "c"]  # warm-up, untimed
    timed = order[6:]
    assert timed[:3] == ["a", "b", "c"] and timed[3:6] == ["b", "c", "a"] and timed[6:9] == ["c", "a", "b"]
    assert timings.order[3] == ("a", "b", "c") and timings.rounds == 4
    for name, cost in (("a", 0.001), ("b", 0.002), ("c", 0.004)):
        assert timings.seconds[name] == pytest.approx([cost] * 4)


def test_seconds_budget_stops_after_the_budget_with_a_minimum_of_rounds():
    clock = FakeClock()
    timings = interleaved_timings({"a": clock.runner(0.125), "b": clock.runner(0.125)}, warmup=0, seconds=1.0, clock=clock)
    assert timings.rounds == 4  # each round takes 0.25 s of the fake clock
    short = interleaved_timings({"a": clock.runner(1.0)}, warmup=0, seconds=0.01, min_rounds=3, clock=clock)
    assert short.rounds == 3
    with pytest.raises(ValueError, match="exactly one"):
        interleaved_timings({"a": clock.runner(0.1)}, iterations=3, seconds=1.0, clock=clock)


def test_short_calls_are_timed_in_blocks():
    clock = FakeClock()
    timings = interleaved_timings({"x": clock.runner(1e-5)}, warmup=1, iterations=2, min_sample_s=1e-3, clock=clock)
    assert timings.calls_per_sample == 100 and timings.seconds["x"] == pytest.approx([1e-5, 1e-5])


def test_bench_lib_times_with_the_profiler():
    """tools/ benchmarks and graphopt profile share one implementation of timing and statistics."""
    import tools.bench_lib as bench_lib
    from graphopt.profiling import stats, timing

    assert bench_lib.interleaved_timings is timing.interleaved_timings and bench_lib.median_ms is stats.median_ms
    calls = []
    real = interleaved_latency({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, runs=3, warmup=1,
                               min_sample_s=0.0)
    assert {k: len(v) for k, v in real.items()} == {"x": 3, "y": 3}
    assert calls == ["x", "y", "x", "y", "y", "x", "x", "y"]  # warm-up, then rotating rounds


def test_default_threads_counts_cores():
    assert 1 <= default_threads() <= (len(__import__("os").sched_getaffinity(0)))


def test_profile_two_models_interleaved(tmp_path):
    first, second = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(conv_bn_model(seed=0), str(first))
    onnx.save(conv_bn_model(seed=1), str(second))
    result = profile_engines([first, second, first], ProfileOptions(batches=(1, 4), iterations=7, warmup=2, threads=1))
    assert [e.label for e in result.engines] == ["a.onnx", "b.onnx", "a.onnx#2"]
    assert result.batches == [1, 4] and result.rounds == {1: 7, 4: 7} and result.threads == 1
    for engine in result.engines:
        assert engine.providers == ["CPUExecutionProvider"] and engine.fallback_reason is None
        assert [(m.batch, m.mode) for m in engine.measurements] == [(1, "host"), (4, "host")]
        for m in engine.measurements:
            assert m.stats.samples == 7 and len(m.samples_ms) == 7
            assert m.stats.min_ms <= m.stats.p50_ms <= m.stats.p90_ms <= m.stats.p99_ms <= m.stats.max_ms
    assert all(m.ratio_p50 == 1.0 for m in result.engines[0].measurements)
    ratio = result.engines[1].measurements[0]
    assert ratio.ratio_p50 == pytest.approx(ratio.stats.p50_ms / result.engines[0].measurements[0].stats.p50_ms)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["interleaved"] is True and data["engines"][0]["measurements"][1]["batch"] == 4


def test_profile_options_and_feeds_refuse_bad_input(tmp_path):
    with pytest.raises(InputError, match="not both"):
        ProfileOptions(iterations=3, seconds=1.0)
    with pytest.raises(InputError, match="≥ 1"):
        ProfileOptions(batches=(0,))
    fixed = onnx.load_model_from_string(conv_bn_model(batch=2).SerializeToString())
    path = tmp_path / "fixed.onnx"
    onnx.save(fixed, str(path))
    with pytest.raises(InputError, match="fixed batch of 2"):
        profile_engines([path], ProfileOptions(batches=(1,), iterations=2))
    result = profile_engines([path], ProfileOptions(iterations=2, warmup=0))
    assert result.batches == [2]  # the model's own batch when none is asked for
    from graphopt.data import InputSpec

    feeds = make_feeds([InputSpec("x", np.dtype(np.float32), ("N", 3, None))], 5)
    assert feeds["x"].shape == (5, 3, 64)
