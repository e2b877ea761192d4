"""Calibration-based static int8 quantization.

One module per step: :mod:`.scheme` (the Q/DQ layout for the target), :mod:`.calibration` (streaming
ranges), :mod:`.smoothquant` / :mod:`.outlier_split` / :mod:`.attention_float` (transformer methods run
before calibrating), :mod:`.equalization` (before calibrating), :mod:`.range_choice` (after it) and
:mod:`.bias_correction` (after quantizing), :mod:`.gelu_fusion` (before calibrating, cpu), :mod:`.qdq_folds` (exact
folds of the written QDQ graph, cpu), :mod:`.fallback` (accuracy-aware layers kept in float), :mod:`.trt_check` (TensorRT
deployability), and :mod:`.quantize`, the pass that runs them in order.
"""

from graphopt.passes.int8.quantize import Int8Options, Int8Pass

__all__ = ["Int8Options", "Int8Pass"]
