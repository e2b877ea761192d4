"""Concrete shapes (and small integer values) of every tensor, from one onnxruntime run.

The channel analysis needs every tensor's dims — including the ones exporters compute at run time
(``Shape → Gather → Concat → Reshape``) — and the values of the small integer tensors that feed
``Reshape``/``Expand``/``Split``. onnx shape inference leaves many of them symbolic, so the model is
run once on probe inputs with every intermediate tensor exposed as an output. A dynamic batch
dimension is fed as :data:`PROBE_BATCH` (not 1, so that batch-merging reshapes are not mistaken for
identities); other dynamic dims as :func:`graphopt.data.probe_data` chooses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.data import input_specs, probe_data
from graphopt.errors import PreconditionFailed, first_line

PROBE_BATCH = 2
SMALL_INT_VALUES = 64
"""Integer tensors with at most this many elements keep their values (shape vectors, split sizes)."""


@dataclasses.dataclass
class ProbeRun:
    """What one run on probe inputs showed: shapes of all tensors, values of small integer ones."""

    shapes: dict[str, tuple[int, ...]]
    int_values: dict[str, np.ndarray]
    feeds: dict[str, np.ndarray]

    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        if value.const_value is not None:
            return tuple(int(d) for d in value.const_value.shape.dims)
        return self.shapes.get(value.name)

    def int_value(self, value: ir.Value | None) -> np.ndarray | None:
        if value is None:
            return None
        if value.const_value is not None:
            array = value.const_value.numpy()
            return array if array.dtype.kind in "iu" else None
        return self.int_values.get(value.name)


def probe_feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """One small batch of probe inputs (dynamic batch = :data:`PROBE_BATCH`)."""
    data = probe_data(input_specs(model), count=PROBE_BATCH, seed=seed)
    return {name: array[:PROBE_BATCH] if array.ndim and len(array) > PROBE_BATCH else array
            for name, array in data.inputs.items()}


def run_probe(model: ir.Model, feeds: dict[str, np.ndarray] | None = None) -> ProbeRun:
    """Run ``model`` once with every node output fetched; raise a one-line error if it cannot run."""
    import onnxruntime as ort

    from graphopt.engines.ort import session_options

    feeds = feeds if feeds is not None else probe_feeds(model)
    proto = ir.to_proto(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto
    types = {info.name: info.type.tensor_type.elem_type for info in
             (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
             if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type}
    present = {o.name for o in proto.graph.output}
    for node in proto.graph.node:
        for name in node.output:
            if name and name not in present and name in types:
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                present.add(name)
    try:
        session = ort.InferenceSession(proto.SerializeToString(), session_options(optimization="disable"),
                                       providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(names, feeds)
    except Exception as exc:
        raise PreconditionFailed(f"channel pruning runs the model once to read its tensor shapes, and "
                                 f"onnxruntime (CPU) could not: {first_line(exc)}") from exc
    shapes: dict[str, tuple[int, ...]] = {name: tuple(array.shape) for name, array in feeds.items()}
    int_values: dict[str, np.ndarray] = {}
    for name, array in zip(names, outputs):
        array = np.asarray(array)
        shapes[name] = tuple(int(d) for d in array.shape)
        if array.dtype.kind in "iu" and array.size <= SMALL_INT_VALUES:
            int_values[name] = array.copy()
    return ProbeRun(shapes, int_values, feeds)
