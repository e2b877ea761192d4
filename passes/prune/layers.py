"""Weighted layers, and which of them pruning leaves alone by default.

A *weighted layer* is a ``Conv``/``ConvTranspose``/``Gemm``/``MatMul`` node with a constant weight.
The **first** layers are those with no weighted layer among their ancestors (the stem conv, a
transformer's first Q/K/V projections), the **last** those with none among their descendants (the
classifier). Both are the most sensitive to pruning, so by default:
channel pruning keeps their output channels, magnitude and N:M pruning keep their weights dense.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt.errors import InputError
from graphopt.model_io import ModelLike, load_model

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def weight_index(node: ir.Node) -> int | None:
    """Input index of the node's constant weight (``None`` when it has none)."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHTED_OPS:
        return None
    candidates = (1, 0) if node.op_type == "MatMul" else (1,)
    for index in candidates:
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and value.const_value is not None and len(value.const_value.shape) >= 2:
            return index
    return None


def weighted_layers(model: ir.Model) -> list[ir.Node]:
    return [node for node in model.graph if weight_index(node) is not None]


def first_and_last_layers(model: ir.Model) -> tuple[set[str], set[str]]:
    """Names of the first and last weighted layers: those with no weighted layer among their
    ancestors (resp. descendants). A residual stream that bypasses every layer does not make a
    deep layer "first"."""
    nodes = list(model.graph)
    after_weighted: dict[int, bool] = {}
    first = set()
    for node in nodes:
        producers = [v.producer() for v in node.inputs if v is not None and v.producer() is not None]
        after_weighted[id(node)] = any(weight_index(p) is not None or after_weighted.get(id(p), False)
                                       for p in producers)
        if weight_index(node) is not None and not after_weighted[id(node)]:
            first.add(node.name)
    before_weighted: dict[int, bool] = {}
    last = set()
    for node in reversed(nodes):
        readers = [use.node for v in node.outputs for use in v.uses()]
        before_weighted[id(node)] = any(weight_index(r) is not None or before_weighted.get(id(r), False)
                                        for r in readers)
        if weight_index(node) is not None and not before_weighted[id(node)]:
            last.add(node.name)
    return first, last


def resolve_skip(model: ir.Model, skip: Collection[str], skip_first_last: bool) -> dict[str, str]:
    """``{node name: reason}`` for the layers to leave alone. ``skip`` holds node names or weight
    (initializer) names; an unknown name is an error (a typo would silently prune everything)."""
    layers = weighted_layers(model)
    by_weight = {}
    for node in layers:
        by_weight.setdefault(node.inputs[weight_index(node)].name, []).append(node.name)
    names = {node.name for node in model.graph}
    reasons: dict[str, str] = {}
    unknown = []
    for entry in skip:
        if entry in names:
            reasons[entry] = f"'{entry}' is in the skip list"
        elif entry in by_weight:
            for name in by_weight[entry]:
                reasons[name] = f"weight '{entry}' is in the skip list"
        else:
            unknown.append(entry)
    if unknown:
        raise InputError(f"--prune-skip: no node or weight named {', '.join(map(repr, unknown))} in the model")
    if skip_first_last:
        first, last = first_and_last_layers(model)
        for name in sorted(first):
            reasons.setdefault(name, f"'{name}' is a first layer (kept by default; --prune-skip none to prune it)")
        for name in sorted(last):
            reasons.setdefault(name, f"'{name}' is a last layer (kept by default; --prune-skip none to prune it)")
    return reasons


def name_nodes(model: ir.Model) -> None:
    """Give every node a unique name (reports and skip lists refer to nodes by name)."""
    taken: set[str] = set()
    counters: dict[str, int] = {}
    for node in model.graph:
        if node.name and node.name not in taken:
            taken.add(node.name)
            continue
        base = node.name or node.op_type
        while True:
            counters[base] = counters.get(base, 0) + 1
            candidate = f"{base}_{counters[base]}"
            if candidate not in taken:
                break
        node.name = candidate
        taken.add(candidate)


def prepared_copy(model: ModelLike) -> ir.Model:
    """A copy to prune: ``Constant`` nodes lifted to initializers, every node named, nodes sorted.
    Deterministic, so names in reports match between two copies of the same model."""
    working = load_model(model).clone()
    ir_common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(working)
    name_nodes(working)
    working.graph.sort()
    return working
