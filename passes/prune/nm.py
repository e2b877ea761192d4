"""N:M semi-structured sparsity (2:4 by default) and its checker.

The rule: split a weight into groups of ``m`` consecutive values along its reduction
(input-channel) axis and keep the ``n`` largest ``|w|`` of every group, zeroing the other
``m − n``. With 2:4 this is the pattern NVIDIA sparse Tensor Cores (Ampere and later) run at up to
twice the dense math rate; the reduction axis is the one :func:`graphopt.sparsity.reduction_axis`
reads from the consumer (``Conv`` axis 1, ``MatMul`` axis -2, ``Gemm`` by ``transB``). A weight
whose reduction axis is not a multiple of ``m`` (a depthwise conv's 1, an RGB stem's 3) is left
dense. The names of the weights that follow the pattern are recorded in the model's metadata
(:func:`graphopt.sparsity.record_sparse_weights`, key ``graphopt.sparsity.2:4``) for engine builds.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError, PassFailedError
from graphopt.passes.prune.layers import prepared_copy
from graphopt.passes.prune.unstructured import MIN_ELEMENTS, SparsityOutcome, WeightSparsity, eligible_weights
from graphopt.sparsity import follows_n_m, record_sparse_weights, reduction_axis


def parse_pattern(text: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; an :class:`InputError` unless ``0 < n < m``."""
    try:
        n_text, m_text = text.split(":")
        n, m = int(n_text), int(m_text)
    except ValueError:
        raise InputError(f"N:M pattern must look like 2:4, got {text!r}") from None
    if not 0 < n < m:
        raise InputError(f"N:M pattern needs 0 < N < M, got {text!r}")
    return n, m


def apply_n_m(array: np.ndarray, axis: int, n: int, m: int) -> np.ndarray:
    """Keep the ``n`` largest ``|w|`` of every ``m`` consecutive values along ``axis`` (ties: first)."""
    moved = np.moveaxis(array, axis, -1)
    groups = moved.reshape(-1, m)
    order = np.argsort(-np.abs(groups), axis=1, kind="stable")
    keep = np.zeros_like(groups, dtype=bool)
    np.put_along_axis(keep, order[:, :n], True, axis=1)
    pruned = np.where(keep, groups, np.zeros((), dtype=array.dtype)).reshape(moved.shape)
    return np.moveaxis(pruned, -1, axis)


def prune_n_m(model: ir.Model, n: int = 2, m: int = 4, *, skip: Collection[str] = (), skip_first_last: bool = True,
              min_elements: int = MIN_ELEMENTS) -> SparsityOutcome:
    """Apply N:M sparsity to every eligible weight; record them in the metadata; check the result."""
    working = prepared_copy(model)
    chosen, skipped = eligible_weights(working, skip, skip_first_last, min_elements)
    rows = []
    names = []
    for name, (value, layers) in chosen.items():
        array = value.const_value.numpy()
        axis = reduction_axis(value, array.ndim)
        if array.shape[axis] % m:
            skipped.append((name, f"reduction axis has {array.shape[axis]} values, not a multiple of {m}"))
            continue
        pruned = apply_n_m(array, axis, n, m)
        value.const_value = ir.tensor(pruned, name=name)
        names.append(name)
        rows.append(WeightSparsity(name, tuple(node.name for node in layers), tuple(array.shape),
                                   int(array.size - np.count_nonzero(array)), int(pruned.size - np.count_nonzero(pruned))))
    bad = check_n_m(working, names, n, m)
    if bad:
        raise PassFailedError(f"{n}:{m} check failed on {', '.join(bad[:3])} (internal error)")
    record_sparse_weights(working, names, n, m)
    return SparsityOutcome(working, rows, skipped)


def check_n_m(model: ir.Model, names: Collection[str], n: int = 2, m: int = 4) -> list[str]:
    """Names among ``names`` whose initializer does not follow N:M along its reduction axis."""
    initializers = model.graph.initializers
    bad = []
    for name in names:
        value = initializers.get(name)
        if value is None or value.const_value is None:
            bad.append(name)
            continue
        array = value.const_value.numpy()
        if not follows_n_m(array, reduction_axis(value, array.ndim), n, m):
            bad.append(name)
    return bad
