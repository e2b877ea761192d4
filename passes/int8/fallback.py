"""Accuracy-aware fallback: keep the most sensitive layers in float until the budget holds.

Rule:
1. quantize every layer; stop if ``drop ≤ budget`` (``drop`` as in :mod:`graphopt.verify`: accuracy
   points with labels, else 100 − top-1 agreement %, else 100·(1 − mean cosine), worst output);
2. **sensitivity** of layer ``L`` = the drop of the model where *only* ``L`` is quantized (all the
   others in float) — the damage ``L`` does on its own, not masked by the noise of the others —
   measured on a fixed probe subset of the evaluation data (:attr:`Evaluator.probe_samples`);
3. order the layers by decreasing sensitivity and find the shortest prefix ``k`` of that order
   whose move to float gives ``drop ≤ budget`` on the full evaluation data: try ``k = 1, 2, 4, 8, …``
   (growing batches) until the budget holds or ``max_layers`` is reached, then bisect between the
   last failing and the first passing ``k``. When the drop does not grow as layers go back to
   float (the usual case) this is the same ``k`` as moving one layer per step, in ``O(log n)``
   evaluations instead of ``n``. Every evaluated ``k`` is a reported step: its metric, and its
   batch-1 latency, measured for all steps side by side once the search is over.

Candidates are **graph edits of the one quantized model** (:func:`float_layers_model`), not new
quantizer runs: a layer goes back to float by reading its inputs from before their Q→DQ pair,
its original float weight and bias, and by dropping the Q→DQ pairs on its outputs that no
quantized node reads — the model onnxruntime's quantizer writes for the smaller layer set
(tests/test_int8_fallback.py checks both give the same numerics on MatMul models; where the
quantizer folded a Relu into a Conv's output Q, the edit keeps that post-Relu Q where a fresh
run would put a pre-Relu Q before a float Relu — one rounding step apart).

The best model seen (lowest drop) is returned either way, with ``met`` saying whether the budget
held; the caller decides whether it may be written.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Collection, Sequence

import onnx
import onnx_ir as ir

from graphopt.console import track
from graphopt.data import DataSet, input_specs
from graphopt.engines import ort as ort_engine
from graphopt.passes.int8.graph_edit import drop_unused_initializers
from graphopt.passes.int8.scheme import (
    FLOAT_OUTPUT_OK,
    bypass_qdq,
    drop_output_qdq_into_float,
    graph_links,
    keep_int8_flow,
)
from graphopt.profiling.stats import median_ms
from graphopt.profiling.timing import interleaved_timings
from graphopt.verify import Comparison, MetricChoice, compare_outputs

Quantize = Callable[[Sequence[str]], onnx.ModelProto]
"""Builds the QDQ model quantizing exactly the given layer names."""

PROBE_SAMPLES = 32
"""Evaluation samples the sensitivity probes run on (the first ones; the steps use all)."""


@dataclasses.dataclass
class FallbackStep:
    float_layers: tuple[str, ...]
    drop: float
    summary: str
    latency_ms: float | None

    def describe(self) -> str:
        kept = ", ".join(self.float_layers) if self.float_layers else "none"
        if len(self.float_layers) > 4:
            kept = ", ".join(self.float_layers[:3]) + f", … {self.float_layers[-1]}"
        latency = f", {self.latency_ms:.2f} ms" if self.latency_ms is not None else ""
        return f"{len(self.float_layers)} in float ({kept}): drop {self.drop:.3f} pts ({self.summary}){latency}"


@dataclasses.dataclass
class FallbackOutcome:
    model: onnx.ModelProto
    float_layers: tuple[str, ...]
    drop: float
    met: bool
    steps: list[FallbackStep]
    sensitivity: dict[str, float]
    seconds: float = 0.0


class Evaluator:
    """Drop of a candidate against the float reference on ``data`` (one batch at a time).

    The reference outputs are computed once; :meth:`probe` compares on the first
    ``probe_samples`` samples only (their reference outputs are a slice of the same set).
    """

    def __init__(self, reference_model: onnx.ModelProto, data: DataSet, batch_size: int = 32,
                 probe_samples: int = PROBE_SAMPLES, metric: MetricChoice = "auto") -> None:
        self.data = data
        self.metric = metric
        self.batch = data.batch_size_for(input_specs(ir.from_proto(reference_model)), batch_size)
        self.reference = ort_engine.build(reference_model).run_batches(data.batches(self.batch), data.join)
        self.probe_data = data.take(min(probe_samples, len(data)))
        count = len(self.probe_data)
        self.probe_reference = {name: value[:count] for name, value in self.reference.items()}

    def compare(self, model: onnx.ModelProto) -> Comparison:
        outputs = ort_engine.build(model).run_batches(self.data.batches(self.batch), self.data.join)
        return compare_outputs(self.reference, outputs, self.data.labels, self.metric)

    def probe(self, model: onnx.ModelProto) -> Comparison:
        outputs = ort_engine.build(model).run_batches(self.probe_data.batches(self.batch), self.probe_data.join)
        return compare_outputs(self.probe_reference, outputs, self.probe_data.labels, self.metric)


def batch1_latency_ms(models: Sequence[onnx.ModelProto], data: DataSet, *, threads: int = 2,
                      runs: int = 15) -> list[float]:
    """Median latency of one sample for each model (``threads`` intra-op threads), measured side by
    side with the profiler's interleaved rounds (:mod:`graphopt.profiling.timing`: two warm-up runs
    each, then ``runs`` rounds in a rotating order), so that the machine's drift hits all of them alike
    (one model at a time, steps of the same model were seen to differ by 2× on a shared 2-core VM)."""
    sessions = [ort_engine.build(model, threads=threads, spinning=False).session for model in models]
    feeds = next(iter(data.take(1).batches(1)))
    runners = {str(i): functools.partial(session.run, None, feeds) for i, session in enumerate(sessions)}
    timings = interleaved_timings(runners, warmup=2, iterations=runs)
    return [median_ms(timings.seconds[str(i)]) for i in range(len(sessions))]


# -- candidates by graph edits ----------------------------------------------------------------


def float_layers_model(quantized: onnx.ModelProto, original: onnx.ModelProto, layers: Collection[str],
                       output_quantized_ops: Collection[str] | None = None,
                       quantized_nodes: Collection[str] | None = None) -> onnx.ModelProto:
    """``quantized`` with ``layers`` back in float (see the module docstring), dead Q/DQ removed.

    ``original`` is the float model ``quantized`` was made from (node names are shared); a
    layer's float weight and bias come from there, bit for bit. ``output_quantized_ops``: op types
    whose output Q→DQ the quantizer writes whoever reads it (CPU: Conv → QLinearConv), so a float
    reader keeps reading through it; ``None`` = every op but MatMul/Gemm/Add (the CPU layout). On
    the TensorRT layout (no output Q/DQ of its own) pass ``()``. ``quantized_nodes``: the nodes the
    quantizer was asked to quantize; without it, a node counts as quantized when it reads a
    DequantizeLinear — which also counts the float readers of a quantized Conv's output (a
    hard-sigmoid, a squeeze-excite mean), and then the Q→DQ pairs on the outputs of Convs sent back
    to float stay for them (PP-OCRv6 rec with every layer in float kept 30 pairs and 99.3 %
    agreement instead of 100 %).
    """
    layers = set(layers)
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    graph = model.graph
    if not layers:
        return model
    source_nodes = {n.name: n for n in original.graph.node}
    source_inits = {i.name: i for i in original.graph.initializer}
    source_constants = {o: n for n in original.graph.node if n.op_type == "Constant" for o in n.output}
    producers = {o: n for n in graph.node for o in n.output}
    available = ({i.name for i in graph.initializer} | {i.name for i in graph.input}
                 | {o for n in graph.node for o in n.output})
    restored: dict[str, str] = {}
    if quantized_nodes is not None:
        still_quantized = set(quantized_nodes) - layers
    else:
        still_quantized = {n.name for n in graph.node if n.name in source_nodes and n.name not in layers
                           and _is_quantized_node(n, producers)}
    for node in graph.node:
        if node.name not in layers:
            continue
        source = source_nodes[node.name]
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or index >= len(source.input):
                continue
            q = producers.get(dq.input[0])
            if q is not None and q.op_type == "QuantizeLinear":
                writer = producers.get(q.input[0])
                if writer is not None and writer.name in still_quantized and (
                        writer.op_type not in FLOAT_OUTPUT_OK if output_quantized_ops is None
                        else writer.op_type in output_quantized_ops):
                    continue  # the quantizer writes this pair for its quantized writer (e.g. QLinearConv)
                node.input[index] = q.input[0]  # activation: read it before its Q→DQ pair
                continue
            wanted = source.input[index]  # quantized constant (weight, bias): the original float one
            if wanted in restored:
                node.input[index] = restored[wanted]
                continue
            name = wanted
            while name in available:  # the DQ may carry the original name (ORT does so for biases)
                name += "_float"
            if wanted in source_inits:
                init = onnx.TensorProto()
                init.CopyFrom(source_inits[wanted])
                init.name = name
                graph.initializer.append(init)
            elif wanted in source_constants:
                constant = onnx.NodeProto()
                constant.CopyFrom(source_constants[wanted])
                constant.output[0] = name
                constant.name = f"{constant.name}_float"
                graph.node.append(constant)
            else:
                continue
            available.add(name)
            restored[wanted] = name
            node.input[index] = name
    _drop_unread_output_pairs(model, layers, still_quantized, any_float_source=quantized_nodes is not None)
    drop_output_qdq_into_float(model, still_quantized)
    _restore_fused_activations(model, original)
    _remove_dead(model)
    if any(n.op_type == "Constant" for n in graph.node):
        _topological_sort(model)
    return model


def _is_quantized_node(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto]) -> bool:
    return any(producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
               for name in node.input)


def _drop_unread_output_pairs(model: onnx.ModelProto, layers: set[str], quantized_nodes: set[str],
                              any_float_source: bool = False) -> None:
    """Bypass the Q→DQ pairs on outputs of ``layers`` that no quantized node reads; with
    ``any_float_source`` (``quantized_nodes`` is known, not guessed) also those written by any node
    outside ``quantized_nodes`` or by a graph input (pairs the quantizer wrote only for a reader
    that is now float)."""
    graph = model.graph
    producers, readers = graph_links(graph)
    outputs = {o.name for o in graph.output}
    bypassed: list[onnx.NodeProto] = []
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear":
            continue
        source = producers.get(q.input[0])
        float_source = source.name in layers if source is not None else False
        if any_float_source:
            float_source = source is None or source.name not in quantized_nodes
        if not float_source:
            continue
        dqs = readers.get(q.output[0], [])
        if any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        downstream = [r for d in dqs for r in readers.get(d.output[0], [])]
        if any(r.name in quantized_nodes for r in downstream):
            continue
        if not bypass_qdq(source, q, dqs, readers, outputs):
            continue
        bypassed += [q, *dqs]  # removed here: a DQ that wrote a graph output would look alive to _remove_dead
    for node in bypassed:
        graph.node.remove(node)


def _restore_fused_activations(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Put back the Relu / Clip nodes the quantizer folded into a Q (its range clamps the same way)
    where their output is now read in float (by a non-Q node or as a graph output)."""
    graph = model.graph
    present = {n.name for n in graph.node}
    producers, readers = graph_links(graph)
    outputs = {o.name for o in graph.output}
    for node in original.graph.node:
        if node.op_type not in ("Relu", "Clip") or node.name in present:
            continue
        output, source = node.output[0], node.input[0]
        producer = producers.get(output)
        if producer is None or source in producers:
            continue
        if output not in outputs and all(r.op_type == "QuantizeLinear" for r in readers.get(output, [])):
            continue
        producer.output[list(producer.output).index(output)] = source
        restored = onnx.NodeProto()
        restored.CopyFrom(node)
        graph.node.insert(list(graph.node).index(producer) + 1, restored)
        producers[source], producers[output] = producer, restored


def _remove_dead(model: onnx.ModelProto) -> None:
    """Remove nodes no graph output depends on, then the initializers nothing reads any more."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node.input)
    if len(keep) != len(graph.node):
        keep.reverse()
        del graph.node[:]
        graph.node.extend(keep)
    drop_unused_initializers(graph)


def _topological_sort(model: onnx.ModelProto) -> None:
    graph = model.graph
    ready = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in ready for name in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            ordered += rest
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def edits_of(quantized: onnx.ModelProto, original: onnx.ModelProto, layers: Sequence[str],
             nodes: Sequence[str], output_quantized_ops: Collection[str] | None = None) -> Quantize:
    """A :data:`Quantize` that derives each candidate from ``quantized``.

    ``quantized`` quantizes ``nodes`` (the weighted ``layers`` plus flow ops and residual Adds).
    A candidate keeping only some layers quantized also drops the flow ops that no longer feed a
    quantized layer (:func:`~graphopt.passes.int8.scheme.keep_int8_flow`), as the quantizer's own
    model for that node set would.
    """
    everything, weighted = list(nodes), set(layers)

    def quantize(chosen: Sequence[str]) -> onnx.ModelProto:
        keep = set(chosen)
        remaining = keep_int8_flow(original, [name for name in everything if name not in weighted or name in keep])
        left = set(remaining)
        return float_layers_model(quantized, original, [name for name in everything if name not in left],
                                  output_quantized_ops, quantized_nodes=left)

    return quantize


# -- the loop ---------------------------------------------------------------------------------


def prefix_schedule(limit: int) -> list[int]:
    """Growing batch sizes ``1, 2, 4, …`` up to ``limit`` (``limit`` itself last)."""
    sizes, k = [], 1
    while k < limit:
        sizes.append(k)
        k *= 2
    if limit > 0:
        sizes.append(limit)
    return sizes


def run_fallback(quantize: Quantize, layers: Sequence[str], evaluator: Evaluator, budget: float, *,
                 max_layers: int | None = None,
                 latency: Callable[[Sequence[onnx.ModelProto]], list[float]] | None = None,
                 first: onnx.ModelProto | None = None) -> FallbackOutcome:
    """The fallback loop of the module docstring. ``first`` is the all-quantized model if already built.
    ``latency`` times the models of every step side by side once the search is over."""
    started = time.perf_counter()
    layers = list(layers)
    model = first if first is not None else quantize(layers)
    comparison = evaluator.compare(model)
    steps = [FallbackStep((), comparison.worst_drop, comparison.summary(), None)]
    tried: dict[int, tuple[float, onnx.ModelProto]] = {0: (comparison.worst_drop, model)}

    def finish(k: int, met: bool, sensitivity: dict[str, float]) -> FallbackOutcome:
        if latency is not None:
            counts = [len(step.float_layers) for step in steps]
            for step, ms in zip(steps, latency([tried[count][1] for count in counts])):
                step.latency_ms = ms
        drop, chosen = tried[k]
        return FallbackOutcome(chosen, tuple(order[:k]), drop, met, steps, sensitivity,
                               time.perf_counter() - started)

    order: list[str] = []
    if comparison.worst_drop <= budget or not layers:
        return finish(0, comparison.worst_drop <= budget, {})
    sensitivity = {}
    for layer in track(layers, "int8 layer sensitivity", total=len(layers)):
        sensitivity[layer] = evaluator.probe(quantize([layer])).worst_drop
    order = sorted(layers, key=lambda name: (-sensitivity[name], layers.index(name)))
    limit = len(order) if max_layers is None else min(max_layers, len(order))

    def attempt(k: int) -> float:
        keep = set(order[:k])
        candidate = quantize([name for name in layers if name not in keep])
        result = evaluator.compare(candidate)
        tried[k] = (result.worst_drop, candidate)
        steps.append(FallbackStep(tuple(order[:k]), result.worst_drop, result.summary(), None))
        return result.worst_drop

    failing, passing = 0, None
    for k in prefix_schedule(limit):
        if attempt(k) <= budget:
            passing = k
            break
        failing = k
    if passing is not None:
        while passing - failing > 1:
            middle = (failing + passing) // 2
            if attempt(middle) <= budget:
                passing = middle
            else:
                failing = middle
        return finish(passing, True, sensitivity)
    return finish(min(tried, key=lambda n: (tried[n][0], n)), False, sensitivity)
