"""The latency rows of ``graphopt optimize``'s report: original vs optimized, measured side by side.

Measured only when the target is this machine: ``cpu`` always (onnxruntime's CPU provider), ``cuda`` /
``trt`` only when that provider really loads here (checked, never assumed; the TensorRT provider's
engine build happens before timing starts). Both models run at batch 1 (or their fixed batch) on the
first evaluation sample (or probe inputs), with spin-waiting off, interleaved for ``budget_s`` seconds
after a short warm-up (:func:`graphopt.profiling.timing.interleaved_timings`), and summarised by
:func:`graphopt.profiling.stats.summarize`. Anything that stops the measurement becomes a reason in
the report, never a failed optimize run.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import onnx_ir as ir

from graphopt.data import DataSet
from graphopt.engines.providers import ProviderUnavailableError
from graphopt.errors import GraphoptError, first_line
from graphopt.target import Target

DEFAULT_BUDGET_S = 2.0
BUDGET_ENV = "GRAPHOPT_LATENCY_BUDGET"
"""Environment default for ``--latency-budget`` (seconds; ``0`` skips the measurement)."""
WARMUP = 3


def default_budget() -> float:
    """``$GRAPHOPT_LATENCY_BUDGET`` when set (``0`` = off), else :data:`DEFAULT_BUDGET_S`."""
    raw = os.environ.get(BUDGET_ENV, "").strip()
    if not raw:
        return DEFAULT_BUDGET_S
    try:
        return max(float(raw), 0.0)
    except ValueError:
        return DEFAULT_BUDGET_S


def measure_speedup(original: ir.Model, optimized: ir.Model, target: Target, budget_s: float,
                    data: DataSet | None = None, threads: int | None = None) -> dict[str, Any]:
    """Latency of ``original`` and ``optimized`` on ``target``, interleaved for ``budget_s`` seconds."""
    from graphopt.engines.load import open_model
    from graphopt.profiling.feeds import cast_to_inputs, make_feeds
    from graphopt.profiling.profiler import default_threads, resolve_batches
    from graphopt.profiling.stats import summarize
    from graphopt.profiling.timing import interleaved_timings

    threads = threads or default_threads()
    base: dict[str, Any] = {"measured": False, "target": target.kind, "budget_s": budget_s, "threads": threads}
    try:
        with tempfile.TemporaryDirectory(prefix="graphopt-latency-") as cache:
            engines = {}
            for name, model in (("original", original), ("optimized", optimized)):
                engines[name] = open_model(model, target.kind, threads=threads,
                                           spinning=False, label=name, trt_cache=Path(cache))
            batch = resolve_batches(list(engines.values()), None)[0]
            runners = {}
            for name, engine in engines.items():
                feeds = cast_to_inputs(make_feeds(engine.input_specs, batch, {}, data), engine.input_specs)
                engine.run(feeds)
                runners[name] = (lambda session, f: lambda: session.run(None, f))(engine.runner.session, feeds)
            timings = interleaved_timings(runners, warmup=WARMUP, seconds=budget_s)
    except ProviderUnavailableError as exc:
        return {**base, "reason": f"target {target.kind} is not this machine: {exc.provider} does not load here ({exc.reason})"}
    except GraphoptError as exc:
        return {**base, "reason": first_line(exc)}
    except Exception as exc:  # a model ORT cannot run here is a note in the report, not a failed run
        return {**base, "reason": f"{type(exc).__name__}: {first_line(exc)}"}
    stats = {name: summarize(seconds, batch) for name, seconds in timings.seconds.items()}
    return {**base, "measured": True, "providers": engines["optimized"].providers, "batch": batch,
            "rounds": timings.rounds, "original": stats["original"].to_dict(), "optimized": stats["optimized"].to_dict(),
            "ratio_p50": stats["optimized"].p50_ms / stats["original"].p50_ms}


SLOWER_WARNING_RATIO = 1.05
"""The optimized model's median latency over the original's above which optimize warns. The interleaved
2-second medians of two equal models stay within a few percent of each other. Met in practice by int8 on
MobileNetV3-Small (its small int8 convs are slower than onnxruntime's fp32 NCHWc ones, and its HardSwish /
HardSigmoid gates, fused into the fp32 convs, have no int8 kernel): 1.07–1.12× at batch 1, 2 threads
(1.42× at batch 4)."""


def slower_warning(latency: dict | None) -> str | None:
    """A warning line when ``latency`` (:func:`measure_speedup`) shows the optimized model slower than the original
    by more than :data:`SLOWER_WARNING_RATIO`, else ``None``."""
    if not latency or not latency.get("measured") or latency["ratio_p50"] <= SLOWER_WARNING_RATIO:
        return None
    return (f"the optimized model runs {latency['ratio_p50']:.2f}× the original's latency here ({latency['target']}, "
            f"{latency['threads']} thread(s), batch {latency['batch']}: p50 {latency['optimized']['p50_ms']:.2f} vs "
            f"{latency['original']['p50_ms']:.2f} ms); the passes cost speed on this model")
