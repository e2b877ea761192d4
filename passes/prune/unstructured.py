"""Unstructured magnitude pruning: zero the smallest weights of Conv/ConvTranspose/Gemm/MatMul.

* ``scope="layer"``: every eligible weight loses exactly ``round(amount · size)`` values — its own
  smallest ``|w|`` (a weight that already had more zeros keeps them);
* ``scope="global"``: one threshold over all eligible weights together, so that exactly
  ``round(amount · Σ size)`` values are zero; layers with small weights lose more.

Eligible: the constant weight of a weighted layer (:mod:`.layers`) with at least ``min_elements``
values, not skipped (first/last layers by default). The graph and every shape stay as they are:
dense kernels do the same work on zeros, so this saves nothing at run time on CPU/GPU dense
backends; it pays in compressed size and with sparse storage (:mod:`graphopt.sparse_initializers`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.passes.prune.layers import prepared_copy, resolve_skip, weight_index, weighted_layers

Scope = Literal["layer", "global"]
MIN_ELEMENTS = 1024
"""Weights with fewer values than this are left dense ("tiny")."""


@dataclasses.dataclass(frozen=True)
class WeightSparsity:
    """One pruned weight."""

    weight: str
    layers: tuple[str, ...]
    shape: tuple[int, ...]
    zeros_before: int
    zeros_after: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.size


@dataclasses.dataclass
class SparsityOutcome:
    model: ir.Model
    weights: list[WeightSparsity]
    skipped: list[tuple[str, str]]
    """``(weight name, reason)`` of weights left dense."""

    @property
    def sparsity(self) -> float:
        """Zeros over all pruned weights."""
        size = sum(w.size for w in self.weights)
        return sum(w.zeros_after for w in self.weights) / size if size else 0.0


def eligible_weights(model: ir.Model, skip: Collection[str], skip_first_last: bool,
                     min_elements: int) -> tuple[dict[str, tuple[ir.Value, list[ir.Node]]], list[tuple[str, str]]]:
    """``{weight name: (value, layers)}`` to prune and ``[(weight, reason)]`` left alone."""
    skipped_layers = resolve_skip(model, skip, skip_first_last)
    found: dict[str, tuple[ir.Value, list[ir.Node]]] = {}
    for node in weighted_layers(model):
        value = node.inputs[weight_index(node)]
        found.setdefault(value.name, (value, []))[1].append(node)
    chosen, skipped = {}, []
    for name, (value, layers) in found.items():
        reasons = [skipped_layers[n.name] for n in layers if n.name in skipped_layers]
        size = int(np.prod(value.const_value.shape.dims))
        if reasons:
            skipped.append((name, reasons[0]))
        elif not value.const_value.dtype.is_floating_point():
            skipped.append((name, f"{value.const_value.dtype.name.lower()} weight"))
        elif size < min_elements:
            skipped.append((name, f"tiny ({size} values < {min_elements})"))
        else:
            chosen[name] = (value, layers)
    return chosen, skipped


def prune_magnitude(model: ir.Model, amount: float, *, scope: Scope = "layer", skip: Collection[str] = (),
                    skip_first_last: bool = True, min_elements: int = MIN_ELEMENTS) -> SparsityOutcome:
    """Zero the smallest-magnitude weights to sparsity ``amount`` (module docstring). New model."""
    if not 0.0 <= amount < 1.0:
        raise InputError(f"pruning amount must be in [0, 1), got {amount}")
    if scope not in ("layer", "global"):
        raise InputError(f"pruning scope must be layer or global, got {scope!r}")
    working = prepared_copy(model)
    chosen, skipped = eligible_weights(working, skip, skip_first_last, min_elements)
    if amount == 0.0 or not chosen:
        return SparsityOutcome(working, [], skipped)
    arrays = {name: value.const_value.numpy() for name, (value, _) in chosen.items()}
    masks = _layer_masks(arrays, amount) if scope == "layer" else _global_masks(arrays, amount)
    rows = []
    for name, (value, layers) in chosen.items():
        array = arrays[name]
        pruned = np.where(masks[name], np.zeros((), dtype=array.dtype), array)
        value.const_value = ir.tensor(pruned, name=name)
        rows.append(WeightSparsity(name, tuple(n.name for n in layers), tuple(array.shape),
                                   int(array.size - np.count_nonzero(array)), int(pruned.size - np.count_nonzero(pruned))))
    return SparsityOutcome(working, rows, skipped)


def _smallest(magnitudes: np.ndarray, count: int) -> np.ndarray:
    """Boolean mask of exactly ``count`` smallest entries (ties broken by position)."""
    mask = np.zeros(magnitudes.size, dtype=bool)
    if count > 0:
        order = np.argsort(magnitudes.reshape(-1), kind="stable")
        mask[order[:count]] = True
    return mask.reshape(magnitudes.shape)


def _layer_masks(arrays: dict[str, np.ndarray], amount: float) -> dict[str, np.ndarray]:
    return {name: _smallest(np.abs(a), int(round(amount * a.size))) for name, a in arrays.items()}


def _global_masks(arrays: dict[str, np.ndarray], amount: float) -> dict[str, np.ndarray]:
    names = list(arrays)
    flat = np.concatenate([np.abs(arrays[n]).reshape(-1).astype(np.float64) for n in names])
    mask = _smallest(flat, int(round(amount * flat.size)))
    out, start = {}, 0
    for name in names:
        size = arrays[name].size
        out[name] = mask[start:start + size].reshape(arrays[name].shape)
        start += size
    return out
