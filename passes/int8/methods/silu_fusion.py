"""SiLU (``x · sigmoid(x)``, "Swish") written as one onnxruntime ``QuickGelu`` before quantizing for its CPU provider.

Exporters write SiLU as two nodes, ``Mul(x, Sigmoid(x))``. In an fp32 graph onnxruntime fuses the pair into its
contrib ``QuickGelu`` kernel (``x · sigmoid(α·x)``, α = 1), one vectorised pass. In a QDQ graph ``x`` is the
output of a ``DequantizeLinear`` read by both the Sigmoid and the Mul; onnxruntime's QDQ preparation
(``EnsureUniqueDQForNodeUnit``) gives each reader its own DequantizeLinear, the fusion then finds two different
``x`` and the model runs both DequantizeLinears, the Sigmoid and the Mul on every activation — the same trap as
:mod:`.gelu_fusion`. Measured on MobileViT-256 int8 with its SiLUs in float (batch 4, AVX-512 VNNI, onnxruntime
1.31, interleaved runs):
DequantizeLinear 21 ms, Mul 14 ms and Sigmoid 9 ms of 103 ms of kernel time at 2 threads, and the int8 model ran
1.05× the fp32 one; with its 29 SiLUs written as QuickGelu it ran 0.84× (0.70× at 1 thread, from 0.89×), with the
same outputs (mean cosine to fp32 0.98742 both).

ONNX's own ``Swish`` (opset 24) is not used: onnxruntime 1.31 expands that function back into Sigmoid and Mul.
``QuickGelu`` (``com.microsoft``) is what onnxruntime itself writes for SiLU, so the rewrite is for the ``cpu``
target (onnxruntime's CPU provider) only.

Only SiLUs left in float are fused: a SiLU between quantized layers is quantized itself (the ``cpu`` scheme's
sigmoid gates, :data:`graphopt.passes.int8.scheme.CPU_GATE_OPS`) and runs as QLinearSigmoid + QLinearMul, faster
still (EfficientNet-224: 0.72× / 0.90× fp32 at 1 / 2 threads against 0.82× / 0.99× with QuickGelu). Float SiLUs remain where a float op
reads the gate, or where ``--exclude-nodes`` / the accuracy fallback keep the layers around it in float.

Pattern: ``s = Sigmoid(x)`` read only by ``y = Mul(x, s)`` (either operand order), ``s`` no graph output, neither
node among the quantized ones.
"""

from __future__ import annotations

from collections.abc import Collection

import onnx
from onnx import helper

from graphopt.passes.int8.graph_edit import other_input
from graphopt.passes.int8.scheme import graph_links

DOMAIN = "com.microsoft"


def find_silus(model: onnx.ModelProto, quantized: Collection[str] = ()) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """``(sigmoid, mul)`` for every float SiLU (module docstring) in the main graph; ``quantized``: the names of
    the nodes to be quantized."""
    graph = model.graph
    _, consumers = graph_links(graph)
    outputs = {o.name for o in graph.output}
    found = []
    for sigmoid in graph.node:
        if sigmoid.op_type != "Sigmoid" or sigmoid.domain not in ("", "ai.onnx") or sigmoid.output[0] in outputs:
            continue
        readers = consumers.get(sigmoid.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Mul" or readers[0].domain not in ("", "ai.onnx"):
            continue
        mul = readers[0]
        if sigmoid.name in quantized or mul.name in quantized:
            continue
        if other_input(mul, sigmoid.output[0]) == sigmoid.input[0]:
            found.append((sigmoid, mul))
    return found


def fuse_silus(model: onnx.ModelProto, quantized: Collection[str] = ()) -> tuple[onnx.ModelProto, int]:
    """``(model with every float SiLU as one QuickGelu node, how many)``; ``model`` itself when there is none."""
    if not find_silus(model, quantized):
        return model, 0
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    silus = find_silus(result, quantized)
    sigmoids = {id(sigmoid) for sigmoid, _ in silus}
    replacement = {id(mul): helper.make_node("QuickGelu", [sigmoid.input[0]], [mul.output[0]], domain=DOMAIN,
                                             alpha=1.0, name=(mul.name or sigmoid.name) + "_silu")
                   for sigmoid, mul in silus}
    kept = [replacement.get(id(node), node) for node in graph.node if id(node) not in sigmoids]
    del graph.node[:]
    graph.node.extend(kept)
    if not any(o.domain == DOMAIN for o in result.opset_import):
        result.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    return result, len(silus)


def report(count: int) -> dict:
    changed = (f"{count} float SiLU(s) (x·sigmoid(x)) written as one onnxruntime QuickGelu: onnxruntime fuses "
               "the two-node form only in float graphs" if count else "no SiLU left in float")
    return {"method": "silu-fusion", "changed": changed, "layers": []}
