"""Weight sparsity facts shared by ``graphopt inspect``, the prune pass and engine builds.

**N:M pattern.** A weight follows N:M when, split into groups of M consecutive values along its
reduction (input-channel) axis, every group holds at most N non-zeros (2:4 is what NVIDIA sparse
Tensor Cores accelerate). That axis length must be a multiple of M. The reduction axis is read
from the weight's consumer (through one ``DequantizeLinear``/``Cast``): axis 1 for ``Conv``
weights ``[Cout, Cin/g, k…]``, axis 0 for ``ConvTranspose`` ``[Cin, Cout/g, k…]``, axis -2 for a
``MatMul`` right operand ``[…, K, N]``, ``Gemm`` B by ``transB``; the last axis otherwise.

**Metadata.** A pass that writes 2:4 weights records their initializer names in the model's
``metadata_props`` under :data:`SPARSITY_2_4_KEY` as a JSON list, so an engine build (TensorRT's
``SPARSE_WEIGHTS`` flag) can enable sparse kernels without scanning every weight.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

SPARSITY_2_4_KEY = "graphopt.sparsity.2:4"
"""``metadata_props`` key: JSON list of the initializer names that follow 2:4 along their reduction axis."""

DEFAULT_DOMAINS = ("", "ai.onnx")


def sparsity_key(n: int, m: int) -> str:
    """The ``metadata_props`` key for an N:M pattern (``graphopt.sparsity.2:4`` for 2:4)."""
    return f"graphopt.sparsity.{n}:{m}"


def follows_n_m(array: np.ndarray, axis: int, n: int = 2, m: int = 4) -> bool:
    """Every group of ``m`` consecutive values along ``axis`` has at most ``n`` non-zeros."""
    if array.ndim == 0 or array.shape[axis] % m:
        return False
    groups = np.moveaxis(array, axis, -1).reshape(-1, m)
    return bool((np.count_nonzero(groups, axis=1) <= n).all())


def reduction_axis(value: ir.Value, rank: int) -> int:
    """The input-channel axis of a weight, from its consumer (module docstring); last otherwise."""
    frontier = [value]
    for _ in range(2):  # the weight itself, then through one DequantizeLinear / Cast
        nxt = []
        for val in frontier:
            for node, index in val.uses():
                op = node.op_type if node.domain in DEFAULT_DOMAINS else None
                if op in ("Conv", "ConvInteger") and index == 1 or op == "QLinearConv" and index == 3:
                    return 1
                if op == "ConvTranspose" and index == 1:
                    return 0
                if op in ("MatMul", "MatMulInteger") and index == 1 or op == "QLinearMatMul" and index == 3:
                    return rank - 2
                if op == "Gemm" and index == 1:
                    trans_b = node.attributes.get("transB")
                    return 1 if trans_b is not None and trans_b.as_int() else 0
                if op in ("DequantizeLinear", "Cast") and index == 0:
                    nxt.extend(node.outputs)
        frontier = nxt
    return rank - 1


def recorded_sparse_weights(model: ir.Model, n: int = 2, m: int = 4) -> list[str]:
    """Initializer names a pass recorded as N:M in the model's metadata (empty when none)."""
    return parse_recorded_names(model.metadata_props.get(sparsity_key(n, m)))


def parse_recorded_names(text: str | None) -> list[str]:
    """The names in a sparsity metadata value (a JSON list); empty when absent or malformed."""
    if not text:
        return []
    try:
        names = json.loads(text)
    except ValueError:
        return []
    return [str(name) for name in names] if isinstance(names, list) else []


def record_sparse_weights(model: ir.Model, names: list[str], n: int = 2, m: int = 4) -> None:
    """Write (or, for an empty list, remove) the N:M metadata entry."""
    key = sparsity_key(n, m)
    if names:
        model.metadata_props[key] = json.dumps(sorted(names))
    else:
        model.metadata_props.pop(key, None)
