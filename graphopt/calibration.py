"""Streaming activation statistics for calibration (int8 ranges, fp16 overflow checks).

The model is rewritten once so that what is needed of every tensor of interest is also a graph
output; it then runs **once per batch** and each collector folds the batch into a fixed-size
running state (min/max, or a histogram in the int8 collectors), so peak memory does not grow with
the number of samples.

Two ways to expose a tensor ``t``:

* :func:`with_outputs` — ``t`` itself becomes a graph output (the whole batch of values);
* :func:`with_summaries` — the graph computes what calibration reads of ``t`` and outputs only
  that: ``ReduceMin(t)``, ``ReduceMax(t)`` and, for histograms, every ``k``-th value of each
  sample, ``Slice(Flatten(t, axis=1), steps=k)`` with ``k = ceil(M / V)`` (``M`` values per sample,
  ``V`` wanted). onnxruntime then frees each activation as soon as its readers ran, instead of
  keeping all of them alive as outputs and copying them out, and the reductions run in its
  multi-threaded kernels instead of numpy: for a 224×224 ResNet-18 at batch 8 this cuts the peak
  RSS of calibration and most of its time beyond the plain model runs (tools/bench_calibration.py).

MinMax rule: after batches B_1..B_k, ``min_t = min_i min(B_i[t])`` and ``max_t = max_i max(B_i[t])``,
which equals the one-shot result on the concatenated data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.console import track
from graphopt.data import DataSet, input_specs
from graphopt.engines import ort as ort_engine

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}


@dataclasses.dataclass
class TensorRange:
    """Observed range of one tensor over all calibration samples seen so far."""

    name: str
    min: float = float("inf")
    max: float = float("-inf")
    count: int = 0
    """Number of batches folded in."""

    @property
    def max_abs(self) -> float:
        return max(abs(self.min), abs(self.max))

    def update(self, array: np.ndarray) -> None:
        if array.size == 0:
            return
        self.update_bounds(float(np.min(array)), float(np.max(array)))

    def update_bounds(self, low: float, high: float) -> None:
        """Fold in one batch's min and max."""
        self.min = min(self.min, low)
        self.max = max(self.max, high)
        self.count += 1


def float_tensor_names(model: ir.Model | onnx.ModelProto, include_inputs: bool = True) -> list[str]:
    """Float tensors of the main graph worth observing: graph inputs and node outputs."""
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    initializers = {init.name for init in proto.graph.initializer}
    names: list[str] = []
    if include_inputs:
        names += [i.name for i in proto.graph.input if i.name not in initializers and types.get(i.name) in FLOAT_TYPES]
    for node in proto.graph.node:
        names += [o for o in node.output if o and types.get(o) in FLOAT_TYPES and o not in initializers]
    return list(dict.fromkeys(names))


def with_outputs(model: ir.Model | onnx.ModelProto, tensor_names: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``tensor_names`` (typed by shape inference)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model if isinstance(model, onnx.ModelProto) else ir.to_proto(model))
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)}
    existing = {o.name for o in proto.graph.output}
    inputs = {i.name for i in proto.graph.input}
    for name in tensor_names:
        if name in existing:
            continue
        if name in infos:
            info = onnx.ValueInfoProto()
            info.CopyFrom(infos[name])
            if name not in inputs:  # a graph input keeps its declared shape (its batch axis decides the feeds)
                info.type.tensor_type.ClearField("shape")  # shapes may be symbolic; types are what ORT needs
        else:
            info = onnx.ValueInfoProto(name=name)
        proto.graph.output.append(info)
        existing.add(name)
    return proto


@dataclasses.dataclass(frozen=True)
class TensorSummary:
    """One batch of one tensor as :func:`with_summaries` reports it."""

    min: float
    max: float
    sampled: np.ndarray | None = None
    """``(N, m)``: every ``k``-th value of each of the batch's ``N`` samples (``None``: not asked)."""


SUMMARY_SUFFIXES = ("::graphopt_min", "::graphopt_max", "::graphopt_sampled")


def with_summaries(model: ir.Model | onnx.ModelProto, tensor_names: Sequence[str],
                   values_per_sample: int | None) -> tuple[onnx.ModelProto, set[str]]:
    """A copy of ``model`` that outputs the min, max and (``values_per_sample``) strided samples of
    each tensor (module docstring), and the names it could not summarise (rank unknown or < 2 when
    samples are wanted; these are plain outputs instead)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model if isinstance(model, onnx.ModelProto) else ir.to_proto(model))
    inferred = onnx.shape_inference.infer_shapes(proto)
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    plain: set[str] = set()
    readers: dict[str, list[onnx.NodeProto]] = {}
    """Summary nodes of each tensor; they go right after its producer (and the session runs in
    priority order, :func:`graphopt.engines.ort.session_options`) so the tensor can be freed early."""
    outputs: list[onnx.ValueInfoProto] = []
    if values_per_sample is not None:
        proto.graph.initializer.extend([
            onnx.numpy_helper.from_array(np.array([values_per_sample - 1], np.int64), "graphopt_sample_pad"),
            onnx.numpy_helper.from_array(np.array([values_per_sample], np.int64), "graphopt_sample_count"),
            onnx.numpy_helper.from_array(np.array([0], np.int64), "graphopt_zero"),
            onnx.numpy_helper.from_array(np.array([1], np.int64), "graphopt_one"),
            onnx.numpy_helper.from_array(np.array([2], np.int64), "graphopt_two"),
        ])
    for name in dict.fromkeys(tensor_names):
        info = infos.get(name)
        tensor_type = info.type.tensor_type if info is not None else None
        rank = len(tensor_type.shape.dim) if tensor_type is not None and tensor_type.HasField("shape") else None
        if tensor_type is None or tensor_type.elem_type not in FLOAT_TYPES or (
                values_per_sample is not None and (rank is None or rank < 2)):
            plain.add(name)
            continue
        low, high, sampled = (name + suffix for suffix in SUMMARY_SUFFIXES)
        nodes = readers.setdefault(name, [])
        nodes += [onnx.helper.make_node("ReduceMin", [name], [low], keepdims=0),
                  onnx.helper.make_node("ReduceMax", [name], [high], keepdims=0)]
        outputs += [onnx.helper.make_tensor_value_info(n, tensor_type.elem_type, []) for n in (low, high)]
        if values_per_sample is not None:
            flat, shape, count, padded, step = (f"{name}::graphopt_{part}" for part in
                                                ("flat", "shape", "count", "padded", "step"))
            nodes += [onnx.helper.make_node("Flatten", [name], [flat], axis=1),
                      onnx.helper.make_node("Shape", [flat], [shape]),
                      onnx.helper.make_node("Slice", [shape, "graphopt_one", "graphopt_two"], [count]),
                      onnx.helper.make_node("Add", [count, "graphopt_sample_pad"], [padded]),
                      onnx.helper.make_node("Div", [padded, "graphopt_sample_count"], [step]),  # ceil(M / V)
                      onnx.helper.make_node("Slice", [flat, "graphopt_zero", count, "graphopt_one", step], [sampled])]
            outputs.append(onnx.helper.make_tensor_value_info(sampled, tensor_type.elem_type, None))
    produced = produced_by(proto)
    ordered = [node for name in readers if name not in produced for node in readers[name]]  # graph inputs
    for node in proto.graph.node:
        ordered.append(node)
        for output in node.output:
            ordered += readers.get(output, [])
    del proto.graph.node[:]
    proto.graph.node.extend(ordered)
    proto.graph.output.extend(outputs)
    return (with_outputs(proto, sorted(plain)) if plain else proto), plain


def produced_by(proto: onnx.ModelProto) -> set[str]:
    """Names of the main graph's node outputs."""
    return {output for node in proto.graph.node for output in node.output}


def stream_tensors(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str],
                   consume: Callable[[dict[str, np.ndarray]], None], *, batch_size: int = 16,
                   description: str = "calibrating") -> int:
    """Run ``model`` once per batch of ``data`` and hand ``consume`` the observed tensors.

    Returns the number of batches. Only one batch's activations are alive at a time.
    """
    proto = with_outputs(model, tensor_names)
    wanted = set(tensor_names)
    return _stream(proto, data, batch_size, description,
                   lambda named: consume({name: value for name, value in named.items() if name in wanted}))


def stream_summaries(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str],
                     consume: Callable[[dict[str, TensorSummary | np.ndarray]], None], *,
                     values_per_sample: int | None = None, batch_size: int = 16,
                     description: str = "calibrating") -> int:
    """Like :func:`stream_tensors`, but ``consume`` gets a :class:`TensorSummary` per tensor
    (:func:`with_summaries`; the whole array for the few tensors it cannot summarise)."""
    proto, plain = with_summaries(model, tensor_names, values_per_sample)
    summarised = [name for name in dict.fromkeys(tensor_names) if name not in plain]
    low, high, sampled = SUMMARY_SUFFIXES

    def unpack(named: dict[str, np.ndarray]) -> None:
        batch: dict[str, TensorSummary | np.ndarray] = {name: named[name] for name in plain}
        for name in summarised:
            samples = named.get(name + sampled) if values_per_sample is not None else None
            batch[name] = TensorSummary(float(named[name + low]), float(named[name + high]), samples)
        consume(batch)

    return _stream(proto, data, batch_size, description, unpack)


def _stream(proto: onnx.ModelProto, data: DataSet, batch_size: int, description: str,
            consume: Callable[[dict[str, np.ndarray]], None]) -> int:
    engine = ort_engine.build(proto, optimization="disable", priority_order=True)
    static = data.batch_size_for(input_specs(ir.from_proto(proto)), batch_size)
    batches: Iterable[dict[str, np.ndarray]] = data.batches(static)
    total = -(-len(data) // static)
    count = 0
    for feeds in track(batches, description, total=total):
        outputs = engine.session.run(None, feeds)
        consume(dict(zip(engine.output_names, outputs)))
        count += 1
    return count


def collect_ranges(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str] | None = None,
                   *, batch_size: int = 16, description: str = "collecting ranges") -> dict[str, TensorRange]:
    """Streaming min/max (and so max |x|) of every float tensor (or of ``tensor_names``), reduced
    inside the model (:func:`stream_summaries`)."""
    names = list(tensor_names) if tensor_names is not None else float_tensor_names(model)
    ranges = {name: TensorRange(name) for name in names}

    def consume(batch: dict[str, TensorSummary | np.ndarray]) -> None:
        for name, value in batch.items():
            if isinstance(value, TensorSummary):
                ranges[name].update_bounds(value.min, value.max)
            elif value.dtype.kind == "f":
                ranges[name].update(value)

    stream_summaries(model, data, names, consume, batch_size=batch_size, description=description)
    return ranges
