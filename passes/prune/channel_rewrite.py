"""Apply a channel plan: cut the constants, rewrite sizes and attributes, refresh shapes.

Given the classes to remove, a position of a labelled axis stays iff its class stays
(:func:`keep_function`). Every registered cut slices its constant along its axis (a constant shared
by several nodes gets one new initializer per distinct cut, so nodes that are not pruned keep the
original); split sizes, slice bounds, reshape targets and depthwise ``group`` attributes are
recomputed from the kept counts. :func:`zero_removed` builds the *masked* twin used by the
exactness check: same graph, removed positions of the cut constants set to zero.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt.passes.prune.analysis import ChannelPlan, Keep


def keep_function(plan: ChannelPlan, removed_roots: set[int]) -> Keep:
    """``keep(ids)``: True where the position's class is not removed (fixed positions always stay)."""
    roots = plan.atoms.roots()
    removed = np.zeros(len(roots), dtype=bool)
    if removed_roots:
        removed[list(removed_roots)] = True

    def keep(ids: np.ndarray) -> np.ndarray:
        return ~removed[roots[np.asarray(ids, dtype=np.int64)]]

    return keep


class _Initializers:
    """Adds new initializers under unique names, reusing one per (source, edit) key."""

    def __init__(self, graph: ir.Graph) -> None:
        self.graph = graph
        self.taken = {v.name for v in graph.initializers.values()} | {
            v.name for node in graph for v in node.outputs if v.name} | {v.name for v in graph.inputs}
        self.made: dict[tuple, ir.Value] = {}

    def add(self, key: tuple, base: str, array: np.ndarray) -> ir.Value:
        if key in self.made:
            return self.made[key]
        name, k = f"{base}_pruned", 1
        while name in self.taken:
            k += 1
            name = f"{base}_pruned{k}"
        self.taken.add(name)
        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        value.shape, value.dtype = ir.Shape(array.shape), value.const_value.dtype
        self.graph.register_initializer(value)
        self.made[key] = value
        return value


def apply_plan(model: ir.Model, plan: ChannelPlan, keep: Keep) -> None:
    """Rewrite ``model`` in place (it must be the model ``plan`` was computed on)."""
    graph = model.graph
    inits = _Initializers(graph)
    _cut_constants(plan, keep, inits, zero=False)
    by_input: dict[tuple[int, int], list] = defaultdict(list)
    for rewrite in plan.literal_rewrites:
        by_input[(id(rewrite.origin.node), rewrite.origin.index)].append(rewrite)
    for rewrites in by_input.values():
        node, index = rewrites[0].origin.node, rewrites[0].origin.index
        value = node.inputs[index]
        array = rewrites[0].base.copy()
        flat = array.reshape(-1)
        for rewrite in rewrites:
            if rewrite.ids is not None:
                flat[rewrite.origin.position] = int(keep(rewrite.ids).sum())
        if value.const_value is None or not np.array_equal(array, value.const_value.numpy()):
            key = ("literal", value.name, id(node), index, array.tobytes())
            node.replace_input_with(index, inits.add(key, value.name or f"{node.name}_shape", array))
    for rewrite in plan.int_rewrites:
        node = rewrite.node
        array = np.asarray(rewrite.compute(keep))
        old = node.inputs[rewrite.index] if rewrite.index < len(node.inputs) else None
        if old is not None and old.const_value is not None:
            if np.array_equal(array, old.const_value.numpy()):
                continue
            array = array.astype(old.const_value.numpy().dtype)
        else:
            array = array.astype(np.int64)
        base = old.name if old is not None and old.name else f"{node.name or node.op_type}_input{rewrite.index}"
        new = inits.add(("int", base, rewrite.index, id(node), array.tobytes()), base, array)
        if rewrite.index >= len(node.inputs):
            node.resize_inputs(rewrite.index + 1)
        node.replace_input_with(rewrite.index, new)
        if rewrite.drop_attribute and rewrite.drop_attribute in node.attributes:
            del node.attributes[rewrite.drop_attribute]
    for rewrite in plan.attr_rewrites:
        rewrite.node.attributes[rewrite.name] = ir.AttrInt64(rewrite.name, int(rewrite.compute(keep)))
    _refresh_shapes(model)
    ir_common.RemoveUnusedNodesPass()(model)


def zero_removed(model: ir.Model, plan: ChannelPlan, keep: Keep) -> None:
    """The masked twin (in place): removed positions of every zero-safe cut set to 0, graph unchanged."""
    _cut_constants(plan, keep, _Initializers(model.graph), zero=True)
    ir_common.RemoveUnusedNodesPass()(model)


def _cut_constants(plan: ChannelPlan, keep: Keep, inits: _Initializers, zero: bool) -> None:
    by_input: dict[tuple[int, int], list] = defaultdict(list)
    for cut in plan.cuts:
        if zero and not cut.zero_safe:
            continue
        by_input[(id(cut.node), cut.index)].append(cut)
    for cuts in by_input.values():
        node, index = cuts[0].node, cuts[0].index
        value = node.inputs[index]
        masks = sorted(((cut.axis, keep(cut.ids)) for cut in cuts), key=lambda item: item[0])
        if all(mask.all() for _, mask in masks):
            continue
        array = value.const_value.numpy()
        if zero:
            array = array.copy()
            for axis, mask in masks:
                index_tuple = [slice(None)] * array.ndim
                index_tuple[axis] = ~mask
                array[tuple(index_tuple)] = 0
        else:
            for axis, mask in masks:
                array = np.compress(mask, array, axis=axis)
        key = ("zero" if zero else "cut", value.name, tuple((axis, mask.tobytes()) for axis, mask in masks))
        node.replace_input_with(index, inits.add(key, value.name, array))


def _refresh_shapes(model: ir.Model) -> None:
    """Drop the inferred shapes of intermediate tensors (they changed) and infer them again."""
    outputs = set(model.graph.outputs)
    for node in model.graph:
        for value in node.outputs:
            if value not in outputs:
                value.shape = None
    try:
        ir_common.ShapeInferencePass(strict_mode=False)(model)
    except Exception:  # the validation that follows reports a real problem with its own message
        pass
