"""Activation × activation MatMuls (attention's ``Q·Kᵀ`` and ``P·V``) kept in float where int8 is slower.

Both operands of these MatMuls change with every input, so int8 has to quantize both at run time and
onnxruntime runs them as ``MatMulIntegerToFloat`` / ``QLinearMatMul`` over many small per-head matrices
(64×32 · 32×64 for MiniLM-L6 at sequence 64): the quantize/requantize work around each tiny GEMM costs
more than the GEMM. Measured with onnxruntime's profiler on MiniLM-L6 (batch 4, sequence 64, 1 thread,
AVX2 CPU without VNNI): the 12 attention MatMuls take ~12 ms in int8 (``MatMulIntegerToFloat`` +
``QLinearMatMul``) against ~5 ms in float (``FusedMatMul`` + ``MatMul``); keeping them in float made the
whole model 0.681 → 0.655 × fp32 latency with the mean cosine unchanged (0.9916 → 0.9918). With VNNI
(``vpdpbusd``) the int8 path was not measured here, so there the layers stay quantized as before.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from graphopt.passes.int8.scheme import Int8Scheme, constant_names


def applies(scheme: Int8Scheme) -> bool:
    """Whether the rule applies: the CPU scheme without VNNI (its weights use 7 bits, ``reduce_range``)."""
    return scheme.target == "cpu" and scheme.reduce_range


def activation_matmuls(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """Names of the MatMuls among ``nodes`` whose two inputs are both activations (no constant)."""
    wanted = set(nodes)
    constants = constant_names(model)
    return [n.name for n in model.graph.node if n.name in wanted and n.op_type == "MatMul"
            and len(n.input) == 2 and not any(name in constants for name in n.input)]


def report(names: list[str]) -> dict:
    return {"method": "float-attention-matmuls",
            "changed": f"{len(names)} activation×activation MatMul(s) kept in float (int8 slower without VNNI)"
            if names else "no activation×activation MatMul to keep in float",
            "layers": [{"name": name} for name in names]}
