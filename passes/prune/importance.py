"""Importance of each prunable channel, over the whole group it belongs to.

A channel class (see :mod:`.atoms`) owns slices of several weights: the output filters of every
layer that produces it and the input slices of every layer that reads it. Its score is the norm of
all those slices taken together:

* ``l2`` (default): ``sqrt(Σ_slices Σ w²)`` — the L2 norm of the concatenated slices, i.e. the
  group's column of the L2,1 norm used for filter pruning;
* ``l1``: ``Σ_slices Σ |w|``.

A layer followed directly by an unfolded ``BatchNormalization`` has its output channels scaled by
``γ / sqrt(σ² + ε)`` first — its filters when it produces the channels, the rows of the slices it
reads when it consumes them — so a model scores the same whether or not BN was folded into the conv.
Per-channel constants of other ops (biases, LayerNorm scales) do not count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from graphopt.passes.prune.analysis import ChannelPlan

Criterion = Literal["l1", "l2"]
CRITERIA = ("l1", "l2")
WEIGHT_INPUT = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1}


def class_scores(plan: ChannelPlan, criterion: Criterion = "l2") -> np.ndarray:
    """``scores[root]`` for every class root (other entries unused)."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown pruning criterion {criterion!r}; choose l1 or l2")
    roots = plan.atoms.roots()
    sums = np.zeros(len(roots), dtype=np.float64)
    for cut in plan.cuts:
        if cut.role not in ("in", "out") or not _is_weight(cut.node.op_type, cut.index):
            continue
        weight = _bn_scaled(cut.node, cut.node.inputs[cut.index].const_value.numpy().astype(np.float64))
        rows = np.moveaxis(weight, cut.axis, 0).reshape(len(cut.ids), -1)
        per_position = (rows ** 2).sum(axis=1) if criterion == "l2" else np.abs(rows).sum(axis=1)
        np.add.at(sums, roots[cut.ids], per_position)
    return np.sqrt(sums) if criterion == "l2" else sums


def _is_weight(op_type: str, index: int) -> bool:
    if op_type == "MatMul":
        return index in (0, 1)
    return WEIGHT_INPUT.get(op_type) == index


def _output_axis(node, rank: int) -> int | None:
    """The axis of a layer's weight that indexes its output channels."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "ConvTranspose":
        return 1
    if node.op_type == "Gemm":
        attr = node.attributes.get("transB")
        return 0 if attr is not None and attr.as_int() else 1
    if node.op_type == "MatMul":
        return rank - 1
    return None


def _bn_scaled(node, weight: np.ndarray) -> np.ndarray:
    """``weight`` with its output channels scaled like an unfolded BatchNormalization after ``node``
    would scale them once folded (both the filters it produces and the slices it reads change)."""
    axis = _output_axis(node, weight.ndim)
    if axis is None:
        return weight
    scale = _bn_scale(node, weight.shape[axis])
    if scale is None:
        return weight
    shape = [1] * weight.ndim
    shape[axis] = -1
    return weight * scale.reshape(shape)


def _bn_scale(node, channels: int) -> np.ndarray | None:
    """``γ / sqrt(σ² + ε)`` of a BatchNormalization that alone reads ``node``'s output."""
    uses = node.outputs[0].uses()
    if len(uses) != 1:
        return None
    bn, index = uses[0].node, uses[0].idx
    if bn.op_type != "BatchNormalization" or index != 0:
        return None
    params = [bn.inputs[i] for i in (1, 4)]
    if any(p is None or p.const_value is None for p in params):
        return None
    gamma, var = (p.const_value.numpy().astype(np.float64) for p in params)
    eps_attr = bn.attributes.get("epsilon")
    eps = eps_attr.as_float() if eps_attr is not None else 1e-5
    scale = np.abs(gamma) / np.sqrt(var + eps)
    return scale if scale.shape == (channels,) else None
