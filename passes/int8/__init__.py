"""Calibration-based static int8 quantization.

The core, one module per step: :mod:`.scheme` (the Q/DQ layout for the target), :mod:`.calibration`
(streaming ranges), :mod:`.fallback` (accuracy-aware layers kept in float), :mod:`.trt_check` (TensorRT
deployability), :mod:`.graph_edit` (shared graph helpers) and :mod:`.quantize`, the pass that runs them in order.
The optional methods it runs at fixed points of that order (equalization, SmoothQuant, outlier split, range choice,
bias correction, QDQ folds, …) live in :mod:`.methods`, one module each.
"""

from graphopt.passes.int8.quantize import Int8Options, Int8Pass

__all__ = ["Int8Options", "Int8Pass"]
