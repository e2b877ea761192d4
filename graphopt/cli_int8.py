"""CLI flags of the ``int8`` pass (static int8 quantization with calibration)."""

from __future__ import annotations

import click

CALIB_METHODS = ("minmax", "entropy", "percentile")
"""Same as graphopt.passes.int8.calibration.CALIB_METHODS (not imported: keeps --help fast)."""

OPTIONS = [
    click.option("--int8", is_flag=True, help="Static int8 quantization (QDQ) calibrated on --calib-data."),
    click.option("--calib-method", type=click.Choice(CALIB_METHODS),
                 help="int8 calibration [default: percentile, 99.999 %]."),
    click.option("--calib-samples", type=click.IntRange(min=1), metavar="N",
                 help="Use at most N calibration samples [default: all]."),
    click.option("--calib-random", is_flag=True,
                 help="Calibrate int8 on random inputs when no --calib-data is given (poor accuracy; warns)."),
    click.option("--exclude-nodes", metavar="NAMES", help="Comma-separated node names int8 keeps in float."),
    click.option("--exclude-op-types", metavar="OPS", help="Comma-separated op types int8 keeps in float."),
    click.option("--int8-activations", type=click.Choice(["auto", "uint8", "int8"]), default="auto",
                 show_default=True, help="int8 activation type (auto follows the target)."),
    click.option("--smoothquant", is_flag=True,
                 help="int8: migrate activation outliers into the weights (SmoothQuant) before calibrating: "
                      "more accurate transformers, a little slower."),
    click.option("--no-outlier-split", is_flag=True,
                 help="int8: keep low-SQNR layers wholly in float instead of running only their outlier input "
                      "channels in float."),
    click.option("--no-float-attention", is_flag=True,
                 help="int8: quantize activation×activation MatMuls even on a CPU without VNNI (slower there)."),
    click.option("--no-range-choice", is_flag=True,
                 help="int8: keep the calibration method's range for every activation instead of choosing, per "
                      "tensor, the candidate range with the lowest measured quantization error."),
    click.option("--no-equalization", is_flag=True,
                 help="int8: no cross-layer equalization of Conv → (ReLU/none) → Conv pairs before calibrating."),
    click.option("--no-bias-correction", is_flag=True,
                 help="int8: do not fold each quantized layer's measured output-mean shift into its bias."),
    click.option("--no-gelu-fusion", is_flag=True,
                 help="int8 (cpu): keep five-node GELUs as they are instead of one ONNX Gelu node (opset 20), "
                      "which onnxruntime runs as one kernel in a quantized graph."),
    click.option("--no-silu-fusion", is_flag=True,
                 help="int8 (cpu): keep SiLUs (x·sigmoid(x)) as Sigmoid + Mul instead of one onnxruntime "
                      "QuickGelu node, which it runs as one kernel in a quantized graph."),
    click.option("--no-qdq-folds", is_flag=True,
                 help="int8 (cpu): keep outlier-split masks and constant scales after quantized MatMuls as float "
                      "ops instead of folding them into the Q/DQ nodes (exact either way)."),
    click.option("--no-batched-gemm", is_flag=True,
                 help="int8 (cpu): keep MatMul + bias Add pairs as they are instead of Reshape → Gemm → Reshape, "
                      "which onnxruntime runs as one QGemm also when input shapes are static."),
    click.option("--keep-best", is_flag=True,
                 help="Write the best int8 model found even when --max-accuracy-drop is missed (exit code stays 1)."),
]

_INT8_ONLY = ("calib_method", "calib_samples", "calib_random", "exclude_nodes", "exclude_op_types", "keep_best",
              "smoothquant", "no_outlier_split", "no_float_attention", "no_range_choice", "no_equalization",
              "no_bias_correction", "no_gelu_fusion", "no_silu_fusion", "no_qdq_folds", "no_batched_gemm")


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def build_pass(params: dict):
    """``Int8Pass`` when ``--int8`` is given; the int8-only flags without it are a usage error."""
    from graphopt.errors import InputError

    if not params.get("int8"):
        given = [f"--{name.replace('_', '-')}" for name in _INT8_ONLY if params.get(name)]
        if params.get("int8_activations", "auto") != "auto":
            given.append("--int8-activations")
        if given:
            raise InputError(f"{', '.join(given)} only apply to int8 quantization; add --int8")
        return None
    from graphopt.passes.int8 import Int8Options, Int8Pass

    return Int8Pass(Int8Options(
        calib_method=params.get("calib_method"),
        calib_samples=params.get("calib_samples"),
        calib_random=bool(params.get("calib_random")),
        exclude_nodes=_names(params.get("exclude_nodes")),
        exclude_op_types=_names(params.get("exclude_op_types")),
        activations=params.get("int8_activations") or "auto",
        keep_best=bool(params.get("keep_best")),
        smoothquant=bool(params.get("smoothquant")),
        outlier_split=not params.get("no_outlier_split"),
        float_attention_matmuls=not params.get("no_float_attention"),
        range_choice=not params.get("no_range_choice"),
        equalization=not params.get("no_equalization"),
        bias_correction=not params.get("no_bias_correction"),
        gelu_fusion=not params.get("no_gelu_fusion"),
        silu_fusion=not params.get("no_silu_fusion"),
        qdq_folds=not params.get("no_qdq_folds"),
        batched_gemm=not params.get("no_batched_gemm"),
    ))
