"""The int8 methods: each an optional rewrite the int8 pass runs at one point of its pipeline, with its own
``Int8Options`` field and ``--no-…`` flag, reported under ``stats.methods`` with what it changed.

Before calibrating (float graph): :mod:`.equalization` (cross-layer equalization of Conv stacks),
:mod:`.smoothquant` (activation outliers into the weights, opt-in), :mod:`.outlier_split` (outlier input channels
of FFN MatMuls kept in float), :mod:`.attention_float` (attention MatMuls left float where int8 is slower),
:mod:`.gelu_fusion` (five-node GELU as one op, cpu), :mod:`.silu_fusion` (Sigmoid + Mul SiLU as one op, cpu),
:mod:`.batched_gemm` (MatMul + bias as one Gemm, cpu).
After calibrating: :mod:`.range_choice` (per-tensor clipping range by measured error).
After quantizing: :mod:`.bias_correction` (layer output mean shift folded into the bias), :mod:`.qdq_folds`
(exact folds of the written QDQ graph, cpu).
"""
