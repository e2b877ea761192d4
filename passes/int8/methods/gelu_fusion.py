"""Exact GELU written as one ONNX ``Gelu`` (opset 20) before quantizing for onnxruntime's CPU provider.

Exporters write the exact GELU as five nodes, ``Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)``. onnxruntime
fuses them into one ``Gelu`` kernel in an fp32 graph — but not in a QDQ graph: there ``x`` is the output of
a ``DequantizeLinear`` read by both the ``Div`` and the first ``Mul``, and onnxruntime's QDQ preparation
(``EnsureUniqueDQForNodeUnit``) first gives each reader its own copy of the ``DequantizeLinear``, after
which the fusion no longer finds one ``x`` and the five nodes run one by one. Measured with onnxruntime's
profiler on PP-OCRv6 rec int8 (13 GELUs, batch 1, 1 thread, AVX2 without VNNI): Erf/Div/Add/Mul plus the
duplicated DequantizeLinear took about 5 ms of the 25 ms of kernel time; as ONNX ``Gelu`` nodes they took
2 ms and the whole model 20 ms. The rewrite is exact (``Gelu(x) = x·Φ(x) = 0.5·x·(1 + erf(x/√2))``,
``approximate="none"``).

Pattern (the operand order of the commutative ``Add`` / ``Mul`` is free): ``d = Div(x, c)`` with
``c = √2``, ``e = Erf(d)``, ``a = Add(e, 1)``, ``m = Mul(x, a)``, ``y = Mul(m, 0.5)``; every intermediate is
read only by the next node and is no graph output. The model is converted to opset 20 first (onnx's
version converter) when it is older; a model it cannot convert keeps its GELUs as they are.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt import large
from graphopt.opset_upgrade import UpgradeError, opset_version, upgrade
from graphopt.passes.int8.graph_edit import drop_unused_initializers, other_input
from graphopt.passes.int8.scheme import graph_links

GELU_OPSET = 20


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    init = inits.get(name)
    if init is None:
        return None
    value = numpy_helper.to_array(init)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def find_gelus(model: onnx.ModelProto) -> list[tuple[str, list[onnx.NodeProto]]]:
    """``(x, [div, erf, add, mul, mul_half])`` for every exact GELU (module docstring) in the graph."""
    graph = model.graph
    _, consumers = graph_links(graph)
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}

    def only_reader(tensor: str, op: str) -> onnx.NodeProto | None:
        readers = consumers.get(tensor, [])
        if tensor in outputs or len(readers) != 1 or readers[0].op_type != op:
            return None
        return readers[0]

    found = []
    for div in graph.node:
        if div.op_type != "Div" or len(div.input) != 2 or not np.isclose(_scalar(inits, div.input[1]) or 0.0,
                                                                           np.sqrt(2.0), rtol=1e-6):
            continue
        x = div.input[0]
        erf = only_reader(div.output[0], "Erf")
        add = erf and only_reader(erf.output[0], "Add")
        if add is None or _scalar(inits, other_input(add, erf.output[0]) or "") != 1.0:
            continue
        mul = only_reader(add.output[0], "Mul")
        if mul is None or other_input(mul, add.output[0]) != x:
            continue
        half = only_reader(mul.output[0], "Mul")
        if half is None or _scalar(inits, other_input(half, mul.output[0]) or "") != 0.5:
            continue
        found.append((x, [div, erf, add, mul, half]))
    return found


def fuse_gelus(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, str | None]:
    """``(model with every exact GELU as one Gelu node, how many, why none were fused or None)``."""
    if not find_gelus(model):
        return model, 0, None
    opset = opset_version(model)
    result = model
    if opset < GELU_OPSET:  # graphopt's upgrade: legacy repairs, IR version settled for the new opset
        try:
            result = large.to_proto(upgrade(large.from_proto(model), target=GELU_OPSET).model)
        except UpgradeError as exc:  # the converter lacks an adapter for some op of the model
            return model, 0, f"opset {opset} → {GELU_OPSET} conversion failed ({str(exc).splitlines()[0][:160]})"
    else:
        result = onnx.ModelProto()
        result.CopyFrom(model)
    gelus = find_gelus(result)
    graph = result.graph
    dropped = {id(node) for _, nodes in gelus for node in nodes}
    replacement = {id(nodes[-1]): helper.make_node("Gelu", [x], [nodes[-1].output[0]], name=nodes[-1].name + "_gelu")
                   for x, nodes in gelus}
    kept = [replacement.get(id(node), node) for node in graph.node if id(node) not in dropped or id(node) in replacement]
    del graph.node[:]
    graph.node.extend(kept)
    drop_unused_initializers(graph)
    return result, len(gelus), None


def report(count: int, reason: str | None) -> dict:
    changed = (f"{count} exact GELU(s) written as one ONNX Gelu node (opset {GELU_OPSET}): onnxruntime fuses "
               "the five-node form only in float graphs" if count else
               f"no GELU fused: {reason}" if reason else "no five-node GELU in the model")
    return {"method": "gelu-fusion", "changed": changed, "layers": []}
