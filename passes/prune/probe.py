"""Concrete shapes (and small integer values) of every tensor, from one onnxruntime run.

The channel analysis needs every tensor's dims — including the ones exporters compute at run time
(``Shape → Gather → Concat → Reshape``) — and the values of the small integer tensors that feed
``Reshape``/``Expand``/``Split``. onnx shape inference leaves many of them symbolic, so the model is
run on probe inputs with every intermediate tensor exposed as an output. A dynamic batch dimension
is fed as :data:`PROBE_BATCH` (not 1, so that batch-merging reshapes are not mistaken for
identities); other dynamic dims as :func:`graphopt.data.probe_data` chooses.

A second run with every dynamic input dim changed tells which dims and integer values are
*static* (the same in both runs): those may be replaced by constants when channels are pruned.
When the model cannot run at the second size, only dims that onnx shape inference fixed count.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.data import batch_axis, input_specs, probe_data
from graphopt.errors import PreconditionFailed, first_line

PROBE_BATCH = 2
SMALL_INT_VALUES = 64
"""Integer tensors with at most this many elements keep their values (shape vectors, split sizes)."""


@dataclasses.dataclass
class ProbeRun:
    """What the runs on probe inputs showed: shapes of all tensors, values of small integer ones,
    and which of them stayed the same when the dynamic input dims changed."""

    shapes: dict[str, tuple[int, ...]]
    int_values: dict[str, np.ndarray]
    feeds: dict[str, np.ndarray]
    other_shapes: dict[str, tuple[int, ...]] | None = None
    other_values: dict[str, np.ndarray] | None = None

    def static_axes(self, value: ir.Value) -> tuple[bool, ...]:
        """Per axis of ``value``: the same dim at both probe sizes (onnx shape inference's ints when
        the second run was not possible)."""
        shape = self.shape(value) or ()
        if value.const_value is not None:
            return (True,) * len(shape)
        if self.other_shapes is not None and value.name in self.other_shapes:
            other = self.other_shapes[value.name]
            return tuple(a == b for a, b in zip(shape, other)) if len(other) == len(shape) else (False,) * len(shape)
        declared = value.shape
        if declared is None or len(declared) != len(shape):
            return (False,) * len(shape)
        return tuple(isinstance(d, int) for d in declared.dims)

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
    """One feed of probe inputs (a dynamic batch axis = :data:`PROBE_BATCH`; static dims as declared)."""
    specs = input_specs(model)
    data = probe_data(specs, count=PROBE_BATCH, seed=seed)
    return data.feed(0, data.batch_size_for(specs, PROBE_BATCH))


def second_feeds(model: ir.Model, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray] | None:
    """``feeds`` with every dynamic input dim grown by half (the batch axis + 1) — a symbolic dim named
    alike in several inputs grown alike; ``None`` when none is dynamic."""
    specs = {spec.name: spec for spec in input_specs(model)}
    shared = batch_axis(list(specs.values())).kind == "dynamic"
    grown, changed = {}, False
    named: dict[str, int] = {}
    for name, array in feeds.items():
        spec = specs.get(name)
        dims = list(array.shape)
        for axis, declared in enumerate(spec.shape if spec else ()):
            if not isinstance(declared, int) and axis < len(dims):
                size = dims[axis] + 1 if axis == 0 and shared else dims[axis] + max(dims[axis] // 2, 1)
                dims[axis] = named.setdefault(declared, size) if isinstance(declared, str) else size
                changed = True
        reps = [int(np.ceil(d / max(s, 1))) for d, s in zip(dims, array.shape)]
        grown[name] = np.tile(array, reps)[tuple(slice(0, d) for d in dims)] if array.ndim else array
    return grown if changed else None


def run_probe(model: ir.Model, feeds: dict[str, np.ndarray] | None = None) -> ProbeRun:
    """Run ``model`` with every node output fetched (twice when it has dynamic dims); raise a
    one-line error if it cannot run at all."""
    feeds = feeds if feeds is not None else probe_feeds(model)
    session, names = _session(model)
    try:
        outputs = session.run(names, feeds)
    except Exception as exc:
        raise PreconditionFailed(f"channel pruning runs the model once to read its tensor shapes, and "
                                 f"onnxruntime (CPU) could not: {first_line(exc)}") from exc
    shapes, int_values = _collect(names, outputs, feeds)
    del outputs
    run = ProbeRun(shapes, int_values, feeds)
    other = second_feeds(model, feeds)
    if other is not None:
        try:
            run.other_shapes, run.other_values = _collect(names, session.run(names, other), other)
        except Exception:  # the model only runs at the first size: shape inference decides what is static
            pass
    else:
        run.other_shapes, run.other_values = shapes, int_values
    return run


def _collect(names, outputs, feeds) -> tuple[dict[str, tuple[int, ...]], dict[str, np.ndarray]]:
    shapes: dict[str, tuple[int, ...]] = {name: tuple(array.shape) for name, array in feeds.items()}
    int_values: dict[str, np.ndarray] = {}
    for name, array in zip(names, outputs):
        array = np.asarray(array)
        shapes[name] = tuple(int(d) for d in array.shape)
        if array.dtype.kind in "iu" and array.size <= SMALL_INT_VALUES:
            int_values[name] = array.copy()
    return shapes, int_values


def _session(model: ir.Model):
    """A CPU session over ``model`` with every typed node output as a graph output."""
    import onnxruntime as ort

    from graphopt.engines.ort import session_options

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
    except Exception as exc:
        raise PreconditionFailed(f"channel pruning runs the model once to read its tensor shapes, and "
                                 f"onnxruntime (CPU) could not load it: {first_line(exc)}") from exc
    return session, [o.name for o in session.get_outputs()]
