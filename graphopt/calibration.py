"""Streaming activation statistics for calibration (int8 ranges, fp16 overflow checks).

The model is rewritten once so that every tensor of interest is also a graph output; it then
runs **once per batch** and each collector folds the batch into a fixed-size running state
(min/max, or a histogram in the int8 collectors), so peak memory is bounded by one batch's
activations and does not grow with the number of samples.

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
        self.min = min(self.min, float(np.min(array)))
        self.max = max(self.max, float(np.max(array)))
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
    for name in tensor_names:
        if name in existing:
            continue
        if name in infos:
            info = onnx.ValueInfoProto()
            info.CopyFrom(infos[name])
            info.type.tensor_type.ClearField("shape")  # shapes may be symbolic; types are what ORT needs
        else:
            info = onnx.ValueInfoProto(name=name)
        proto.graph.output.append(info)
        existing.add(name)
    return proto


def stream_tensors(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str],
                   consume: Callable[[dict[str, np.ndarray]], None], *, batch_size: int = 16,
                   description: str = "calibrating") -> int:
    """Run ``model`` once per batch of ``data`` and hand ``consume`` the observed tensors.

    Returns the number of batches. Only one batch's activations are alive at a time.
    """
    proto = with_outputs(model, tensor_names)
    engine = ort_engine.build(proto, optimization="disable")
    wanted = set(tensor_names)
    static = data.batch_size_for(input_specs(ir.from_proto(proto)), batch_size)
    batches: Iterable[dict[str, np.ndarray]] = data.batches(static)
    total = -(-len(data) // static)
    count = 0
    for feeds in track(batches, description, total=total):
        outputs = engine.session.run(None, feeds)
        consume({name: value for name, value in zip(engine.output_names, outputs) if name in wanted})
        count += 1
    return count


def collect_ranges(model: ir.Model | onnx.ModelProto, data: DataSet, tensor_names: Sequence[str] | None = None,
                   *, batch_size: int = 16, description: str = "collecting ranges") -> dict[str, TensorRange]:
    """Streaming min/max (and so max |x|) of every float tensor (or of ``tensor_names``)."""
    names = list(tensor_names) if tensor_names is not None else float_tensor_names(model)
    ranges = {name: TensorRange(name) for name in names}

    def consume(batch: dict[str, np.ndarray]) -> None:
        for name, value in batch.items():
            if value.dtype.kind == "f":
                ranges[name].update(value)

    stream_tensors(model, data, names, consume, batch_size=batch_size, description=description)
    return ranges
