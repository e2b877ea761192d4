"""Outlier-channel split (LLM.int8(), Dettmers et al., 2022): the few huge input channels of a layer run in
float, the rest in int8.

Some activations carry *massive* values: a handful of channels that, on a few tokens, reach 10–100× every
other channel (BERT's FFN inputs in its first layers: GELU outputs up to ~24 where the rest stays below
~2). No per-tensor 8-bit range serves both: a range wide enough for them leaves the bulk a few levels
(main keeps such layers in float, :func:`~graphopt.passes.int8.scheme.low_resolution_layers`); a clipped
range, even after SmoothQuant, clips values the next LayerNorm depends on (MiniLM-L6: mean cosine of
``last_hidden_state`` 0.86–0.90). With the outlier channels ``O`` of ``X`` split off, ``X·W`` becomes

    Y = (X ⊙ m)·W  +  X[:, O]·W[O, :]          m_j = 0 for j ∈ O, 1 otherwise

which is exact in fp32. The first product is quantized like any layer (its rows ``O`` of ``W`` are zeroed
too); the second is a float MatMul of width ``|O|`` (a few channels). Rewrite per activation ``X`` and the
layers reading it: one ``Mul`` (the mask; SmoothQuant folds its own ``1/s`` into the same constant) and
one ``Gather`` of ``O``; per layer a small ``MatMul`` and an ``Add``.

Outlier channels: ``max|X_j|`` (over the observed calibration samples) above :data:`RATIO` × the median
over channels of ``max|X_j|``; split only when there are at most :data:`MAX_SHARE` of the channels
(otherwise the activation is just wide, which the range choice handles).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from graphopt.passes.int8.graph_edit import new_initializer, unique_node_name, unique_tensor_name
from graphopt.passes.int8.methods.smoothquant import MatMulLayer

RATIO = 6.0
"""A channel is an outlier when its peak is above this multiple of the median channel peak."""
MAX_SHARE = 1 / 128
"""Split only when the outlier channels are at most this share of the channels (at least 1)."""


@dataclasses.dataclass(frozen=True)
class Split:
    tensor: str
    channels: tuple[int, ...]
    layers: tuple[str, ...]
    peak_before: float
    peak_after: float


def outlier_channels(absmax: np.ndarray) -> np.ndarray:
    """Indices of ``absmax`` (per-channel peaks) above ``RATIO × median``; empty when none or too many."""
    median = float(np.median(absmax))
    if median <= 0:
        return np.zeros(0, dtype=np.int64)
    found = np.flatnonzero(absmax > RATIO * median)
    if len(found) > max(1, int(MAX_SHARE * len(absmax))):
        return np.zeros(0, dtype=np.int64)
    return found.astype(np.int64)


def split_outliers(model: onnx.ModelProto, tensor: str, layers: list[MatMulLayer], channels: np.ndarray) -> list[MatMulLayer]:
    """Rewrite ``model`` in place (module docstring); returns the layers with their new (masked) weights,
    now reading the masked activation."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    k = layers[0].weight.shape[0]
    mask = np.ones(k, dtype=np.float32)
    mask[channels] = 0.0
    masked = unique_tensor_name(graph, tensor + "_inliers")
    picked = unique_tensor_name(graph, tensor + "_outliers")
    producer_index = next((i for i, n in enumerate(graph.node) if tensor in n.output), -1)
    new_nodes = [
        helper.make_node("Mul", [tensor, new_initializer(graph, inits, tensor + "_inlier_mask", mask)], [masked],
                         name=unique_node_name(graph, tensor + "_inlier_mask")),
        helper.make_node("Gather", [tensor, new_initializer(graph, inits, tensor + "_outlier_idx", channels)],
                         [picked], name=unique_node_name(graph, tensor + "_outlier_gather"), axis=-1),
    ]
    for offset, node in enumerate(new_nodes):
        graph.node.insert(producer_index + 1 + offset, node)
    rewritten: list[MatMulLayer] = []
    for layer in layers:
        node = next(n for n in graph.node if n.name == layer.node.name)
        weight = layer.weight.copy()
        outlier_rows = weight[channels, :].copy()
        weight[channels, :] = 0.0
        node.input[0] = masked
        node.input[1] = new_initializer(graph, inits, node.input[1] + "_inliers", weight.T if layer.trans_b else weight)
        original = node.output[0]
        partial = unique_tensor_name(graph, original + "_inlier_part")
        side = unique_tensor_name(graph, original + "_outlier_part")
        node.output[0] = partial
        position = list(graph.node).index(node)
        graph.node.insert(position + 1, helper.make_node(
            "MatMul", [picked, new_initializer(graph, inits, node.name + "_outlier_w", outlier_rows)], [side],
            name=unique_node_name(graph, node.name + "_outlier_matmul")))
        graph.node.insert(position + 2, helper.make_node("Add", [partial, side], [original],
                                                         name=unique_node_name(graph, node.name + "_outlier_add")))
        rewritten.append(MatMulLayer(node, weight, layer.trans_b))
    return rewritten




