"""Accuracy-aware fallback: keep the most sensitive layers in float until the budget holds.

Rule:
1. quantize every layer; stop if ``drop ≤ budget`` (``drop`` as in :mod:`graphopt.verify`: accuracy
   points with labels, else 100 − top-1 agreement %, else 100·(1 − mean cosine), worst output);
2. **sensitivity** of layer ``L`` = the drop of the model where *only* ``L`` is quantized (all the
   others in float) — the damage ``L`` does on its own, not masked by the noise of the others;
3. move layers to float in decreasing sensitivity, one per step, re-measuring the metric (and the
   batch-1 latency) after each step, until ``drop ≤ budget`` or ``max_layers`` are in float.

The best model seen (lowest drop) is returned either way, with ``met`` saying whether the budget
held; the caller decides whether it may be written.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence

import onnx
import onnx_ir as ir

from graphopt.console import track
from graphopt.data import DataSet, input_specs
from graphopt.engines import ort as ort_engine
from graphopt.verify import Comparison, compare_outputs

Quantize = Callable[[Sequence[str]], onnx.ModelProto]
"""Builds the QDQ model quantizing exactly the given layer names."""


@dataclasses.dataclass
class FallbackStep:
    float_layers: tuple[str, ...]
    drop: float
    summary: str
    latency_ms: float | None

    def describe(self) -> str:
        kept = ", ".join(self.float_layers[-1:]) if self.float_layers else "none"
        latency = f", {self.latency_ms:.2f} ms" if self.latency_ms is not None else ""
        return f"{len(self.float_layers)} in float (+{kept}): drop {self.drop:.3f} pts ({self.summary}){latency}"


@dataclasses.dataclass
class FallbackOutcome:
    model: onnx.ModelProto
    float_layers: tuple[str, ...]
    drop: float
    met: bool
    steps: list[FallbackStep]
    sensitivity: dict[str, float]


class Evaluator:
    """Drop of a candidate against the float reference on ``data`` (one batch at a time)."""

    def __init__(self, reference_model: onnx.ModelProto, data: DataSet, batch_size: int = 32) -> None:
        self.data = data
        self.batch = data.batch_size_for(input_specs(ir.from_proto(reference_model)), batch_size)
        self.reference = ort_engine.build(reference_model).run_batches(data.batches(self.batch))

    def compare(self, model: onnx.ModelProto) -> Comparison:
        outputs = ort_engine.build(model).run_batches(self.data.batches(self.batch))
        return compare_outputs(self.reference, outputs, self.data.labels)


def batch1_latency_ms(model: onnx.ModelProto, data: DataSet, *, threads: int = 2, runs: int = 10) -> float:
    """Median latency of one sample (``threads`` intra-op threads), after two warm-up runs."""
    engine = ort_engine.build(model, threads=threads)
    feeds = next(iter(data.take(1).batches(1)))
    for _ in range(2):
        engine.session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        engine.session.run(None, feeds)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def run_fallback(quantize: Quantize, layers: Sequence[str], evaluator: Evaluator, budget: float, *,
                 max_layers: int | None = None, latency: Callable[[onnx.ModelProto], float] | None = None,
                 first: onnx.ModelProto | None = None) -> FallbackOutcome:
    """The fallback loop of the module docstring. ``first`` is the all-quantized model if already built."""
    layers = list(layers)
    model = first if first is not None else quantize(layers)
    comparison = evaluator.compare(model)
    steps = [FallbackStep((), comparison.worst_drop, comparison.summary(), latency(model) if latency else None)]
    best = (comparison.worst_drop, model, ())
    if comparison.worst_drop <= budget or not layers:
        return FallbackOutcome(model, (), comparison.worst_drop, comparison.worst_drop <= budget, steps, {})
    sensitivity = {}
    for layer in track(layers, "int8 layer sensitivity", total=len(layers)):
        sensitivity[layer] = evaluator.compare(quantize([layer])).worst_drop
    order = sorted(layers, key=lambda name: (-sensitivity[name], layers.index(name)))
    limit = len(order) if max_layers is None else min(max_layers, len(order))
    float_layers: list[str] = []
    for layer in order[:limit]:
        float_layers.append(layer)
        keep = set(float_layers)
        model = quantize([name for name in layers if name not in keep])
        comparison = evaluator.compare(model)
        drop = comparison.worst_drop
        steps.append(FallbackStep(tuple(float_layers), drop, comparison.summary(), latency(model) if latency else None))
        if drop < best[0]:
            best = (drop, model, tuple(float_layers))
        if drop <= budget:
            return FallbackOutcome(model, tuple(float_layers), drop, True, steps, sensitivity)
    drop, model, kept = best
    return FallbackOutcome(model, kept, drop, False, steps, sensitivity)
