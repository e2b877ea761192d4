"""``int8``: calibration-based static int8 quantization (QDQ), scheme chosen for the target.

Steps:
1. refuse models that are already quantized or have no float weights to quantize;
2. choose the scheme for the target (:mod:`graphopt.passes.int8.scheme`) and the nodes it
   quantizes (minus ``exclude_nodes`` / ``exclude_op_types``; on a CPU without VNNI minus the
   activation×activation MatMuls, :mod:`graphopt.passes.int8.methods.attention_float`);
   then, on the float graph, (``cpu``) write MatMul + bias Add pairs as Gemm
   (:mod:`graphopt.passes.int8.methods.batched_gemm`), equalize consecutive Conv pairs exactly (cross-layer equalization,
   :mod:`graphopt.passes.int8.methods.equalization`) and, checked by measured SQNR, split the massive outlier
   input channels of low-resolution layers off into a small float MatMul
   (:mod:`graphopt.passes.int8.methods.outlier_split`) and (opt-in) migrate activation outliers into the weights
   (:mod:`graphopt.passes.int8.methods.smoothquant`), and (``cpu``) write exact GELUs as one ``Gelu`` node
   (:mod:`graphopt.passes.int8.methods.gelu_fusion`); each method is reported under ``stats["methods"]``;
3. calibrate the tensors those nodes read and write, streaming, one model run per batch
   (:mod:`graphopt.passes.int8.calibration`); warn on fewer than 32 samples or unsettled ranges;
   unless a method is given, give each tensor the candidate range with the lowest measured error
   (:mod:`graphopt.passes.int8.methods.range_choice`);
   keep in float the layers whose input would quantize below ``min_sqnr_db`` (heavy-tailed
   activations such as BERT's FFN outputs: :func:`~graphopt.passes.int8.scheme.low_resolution_layers`);
4. let onnxruntime.quantization write the QDQ graph from graphopt's ranges; measure the output-mean
   shift of each quantized layer on the calibration data, fold it into the biases and write it again
   (:mod:`graphopt.passes.int8.methods.bias_correction`); (``cpu``, after step 5) drop the outlier-split masks
   and fold constant scales after quantized MatMuls into their dequantization, both exact
   (:mod:`graphopt.passes.int8.methods.qdq_folds`);
5. with evaluation data and a ``max_accuracy_drop`` budget, run the accuracy-aware fallback
   (:mod:`graphopt.passes.int8.fallback`) so the most sensitive layers stay in float;
6. for ``trt``, check the graph against TensorRT's explicit-quantization rules
   (:mod:`graphopt.passes.int8.trt_check`).

Default calibration method: **percentile (99.999 %) on every target**, chosen by measurement. On the
``trt`` layout (symmetric int8, QDQ evaluated with onnxruntime) entropy (KL, TensorRT's own
calibrator) clipped far too much on the reference models: per-position agreement 63.8 % vs 98.4 %
on PP-OCRv6 rec, top-1 agreement 71.9 % vs 81.3 % on the ResNet-18-style CNN, cosine 0.84 vs 0.994
on MiniLM-L6, and it was never better (digits CNN and the transformer encoder: equal). On ``cpu``
(asymmetric uint8) the same holds (PP-OCRv6 rec 64 % with entropy vs 97.7 %). Percentile clips
only the rarest 0.001 % of ``|x|``, which keeps resolution that single outliers would waste under
MinMax while keeping the systematic outlier channels of transformer activations in range.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import onnx
import onnx_ir as ir

from graphopt import large
from graphopt.console import stderr
from graphopt.data import DataSet, input_specs, probe_data
from graphopt.errors import InputError, PreconditionFailed
from graphopt.opset_upgrade import opset_version
from graphopt.pass_base import GraphoptPass, GraphoptPassResult
from graphopt.passes.int8.calibration import MIN_SAMPLES, CalibMethod, calibrate
from graphopt.passes.int8.fallback import Evaluator, batch1_latency_ms, edits_of, run_fallback
from graphopt.passes.int8.methods import (
    attention_float,
    batched_gemm,
    bias_correction,
    equalization,
    gelu_fusion,
    qdq_folds,
    range_choice,
    silu_fusion,
)
from graphopt.passes.int8.methods.smoothquant import smoothquant
from graphopt.passes.int8.scheme import (
    FLOAT_OUTPUT_OK,
    WEIGHTED_OPS,
    ensure_node_names,
    float_weight_nodes,
    is_quantized,
    low_resolution_layers,
    quantizable_nodes,
    quantize_qdq,
    scheme_for,
    tensors_to_calibrate,
)
from graphopt.passes.int8.trt_check import check_trt_qdq


@dataclasses.dataclass(frozen=True)
class Int8Options:
    calib_method: CalibMethod | None = None
    """``minmax`` | ``entropy`` | ``percentile``; ``None`` = the target's default (module docstring)."""
    percentile: float = 99.999
    """Share of ``|x|`` kept inside the range by the percentile method."""
    calib_samples: int | None = None
    """Use at most this many calibration samples (``None`` = all)."""
    calib_batch_size: int = 8
    """Samples per calibration run; peak memory grows with this, not with the number of samples."""
    calib_random: bool = False
    """Calibrate on standard-normal random inputs when no calibration data is given (poor ranges)."""
    calib_random_samples: int = 64
    per_channel: bool = True
    """Per-channel weight scales (output channels)."""
    activations: Literal["auto", "uint8", "int8"] = "auto"
    """Activation type; ``auto`` follows the target (uint8 on CPU, int8 on TensorRT/CUDA)."""
    exclude_nodes: tuple[str, ...] = ()
    """Node names kept in float."""
    exclude_op_types: tuple[str, ...] = ()
    """Op types kept in float."""
    min_sqnr_db: float | None = 22.0
    """Keep in float every weighted layer whose activation input quantizes below this SQNR (dB) at its
    calibrated range (heavy-tailed inputs, e.g. BERT FFN outputs; see ``low_resolution_layers``);
    ``None`` turns the guard off. Needs histograms, which calibration then collects for every method."""
    fallback: bool = True
    """Run the accuracy-aware fallback when evaluation data and ``max_accuracy_drop`` are given."""
    max_float_layers: int | None = None
    """At most this many layers moved back to float by the fallback (``None`` = no limit)."""
    keep_best: bool = False
    """Write the best model found even when the accuracy budget is missed (the run still fails)."""

    # --- transformer methods (issue 12, transformer half), each reported under the pass's ``methods`` stats
    smoothquant: bool = False
    """Migrate activation outliers into the weights before calibrating (:mod:`.smoothquant`; off by default:
    on MiniLM-L6 it buys cosine at a latency cost, see the module docstring)."""
    outlier_split: bool = True
    """Run the few massive input channels of a layer in float, the rest in int8 (:mod:`.outlier_split`), for
    the layers whose input quantizes below ``min_sqnr_db`` (which main kept wholly in float)."""
    float_attention_matmuls: bool = True
    """On a CPU without VNNI keep activation×activation MatMuls in float (:mod:`.attention_float`)."""

    # --- recogniser / CNN methods (issue 12, recogniser half), each reported under ``methods``
    range_choice: bool = True
    """Give each activation the candidate clipping range (min/max, percentiles, entropy, MSE) with the lowest
    measured quantization error (:mod:`.range_choice`); only when ``calib_method`` is not given explicitly."""
    equalization: bool = True
    """Cross-layer equalization of Conv → (ReLU / none) → Conv pairs before calibrating (:mod:`.equalization`)."""
    bias_correction: bool = True
    """Fold each quantized layer's measured output-mean shift into its bias (:mod:`.bias_correction`)."""
    gelu_fusion: bool = True
    """On the ``cpu`` target write each exact five-node GELU as one ONNX ``Gelu`` (opset 20), which
    onnxruntime runs as one kernel in a QDQ graph too (:mod:`.gelu_fusion`)."""
    silu_fusion: bool = True
    """On the ``cpu`` target write each SiLU ``x·sigmoid(x)`` as one onnxruntime ``QuickGelu``, which it runs
    as one kernel in a QDQ graph too (:mod:`.silu_fusion`)."""
    qdq_folds: bool = True
    """On the ``cpu`` target drop the outlier-split masks and fold constant scales after quantized MatMuls
    into their DequantizeLinear, both exact (:mod:`.qdq_folds`)."""
    batched_gemm: bool = True
    """On the ``cpu`` target write each quantized MatMul + bias Add as ``Reshape → Gemm → Reshape``, which
    onnxruntime runs as one QGemm also when the input shapes are static (:mod:`.batched_gemm`)."""

    def __post_init__(self) -> None:
        if not 0 < self.percentile <= 100:
            raise InputError(f"int8 percentile must be in (0, 100], got {self.percentile}")
        if self.calib_batch_size < 1:
            raise InputError(f"int8 calib_batch_size must be ≥ 1, got {self.calib_batch_size}")
        if self.calib_samples is not None and self.calib_samples < 1:
            raise InputError(f"int8 calib_samples must be ≥ 1, got {self.calib_samples}")


class Int8Pass(GraphoptPass):
    """Static int8 QDQ quantization with streaming calibration and accuracy-aware fallback."""

    name = "int8"
    Options = Int8Options
    min_opset = 13
    lowest_opset = 10  # an old model whose upgrade fails: QuantizeLinear exists from 10, per-channel axis from 13
    own_opset_note = "per-tensor weight scales (per-channel Q/DQ needs opset 13)"
    refuses_after = frozenset({"fp16"})
    uses_data = frozenset({"calib", "eval"})

    def __init__(self, options: Int8Options | None = None) -> None:
        super().__init__(options)
        self.needs = frozenset() if self.options.calib_random else frozenset({"calib"})

    def requires(self, model: ir.Model) -> None:
        proto = large.to_proto(model)
        found = is_quantized(proto)
        if found:
            raise PreconditionFailed(f"model is already quantized ({', '.join(found)} present); "
                                     "give int8 the float model")
        if not float_weight_nodes(proto):
            raise PreconditionFailed("no float weights to quantize: the model has no Conv/ConvTranspose/Gemm/MatMul "
                                     "with a constant float weight")

    def call(self, model: ir.Model) -> GraphoptPassResult:
        options, context = self.options, self.context
        proto = large.to_proto(model)  # weights detached for a large model (graphopt.large)
        ensure_node_names(proto)
        per_channel = options.per_channel and opset_version(proto) >= 13  # see lowest_opset
        scheme = scheme_for(context.target, activations=options.activations, per_channel=per_channel)
        method = options.calib_method or scheme.default_method
        known = {n.name for n in proto.graph.node}
        unknown = [n for n in options.exclude_nodes if n not in known]
        if unknown:
            raise InputError(f"--exclude-nodes: no node named {', '.join(map(repr, unknown))} in the model")
        methods: list[dict] = []
        nodes = quantizable_nodes(proto, scheme, options.exclude_nodes, options.exclude_op_types)
        if not any(n.name in set(nodes) and n.op_type in WEIGHTED_OPS for n in proto.graph.node):
            raise PreconditionFailed("nothing left to quantize: every weighted layer is excluded")
        notes: list[str] = []
        data = self._calibration_data(model)
        guard = options.min_sqnr_db is not None
        if options.batched_gemm and scheme.target == "cpu":  # exact; first, so every method sees the Gemms
            batched = batched_gemm.batch_gemms(proto, nodes)
            if batched.layers:  # the new Reshapes carry int8 between the Gemms like the others
                proto = batched.model
                nodes = quantizable_nodes(proto, scheme, options.exclude_nodes, options.exclude_op_types)
            methods.append(batched.report())
        if options.float_attention_matmuls and attention_float.applies(scheme):
            act_act = attention_float.activation_matmuls(proto, nodes)
            if act_act:
                nodes = quantizable_nodes(proto, scheme, (*options.exclude_nodes, *act_act), options.exclude_op_types)
            methods.append(attention_float.report(act_act))
        if options.equalization:  # exact on the float graph: calibration then sees the equalized activations
            equalized = equalization.equalize(proto, scheme, nodes)
            proto = equalized.model
            methods.append(equalized.report())
        if options.smoothquant or options.outlier_split:  # issue 12: before calibrating the rewritten graph
            prepared = smoothquant(proto, data, nodes, scheme, smooth=options.smoothquant,
                                   split=options.outlier_split and guard, split_below_db=options.min_sqnr_db or 0.0,
                                   batch_size=options.calib_batch_size)
            proto = prepared.model
            methods += prepared.reports(smooth=options.smoothquant, split=options.outlier_split)
        if options.gelu_fusion and scheme.target == "cpu":
            # exact; after SmoothQuant, which folds its 1/s into GELU's ×0.5 (a vector then: left unfused)
            proto, fused, why = gelu_fusion.fuse_gelus(proto)
            methods.append(gelu_fusion.report(fused, why))
        if options.silu_fusion and scheme.target == "cpu":
            proto, fused = silu_fusion.fuse_silus(proto, set(nodes))
            methods.append(silu_fusion.report(fused))
        tensors = tensors_to_calibrate(proto, nodes)
        choose = options.range_choice and options.calib_method is None
        calib = calibrate(proto, data, tensors, method, batch_size=options.calib_batch_size,
                          percentile=options.percentile, histograms=True if guard or choose else None,
                          symmetric=scheme.activation_symmetric)
        if choose:
            chosen, rows = range_choice.choose_ranges(calib.states, calib.ranges,
                                                      symmetric=scheme.activation_symmetric)
            calib = calib.with_ranges(chosen)
            methods.append(range_choice.report(rows))
        if len(data) < MIN_SAMPLES:
            self._warn(f"int8: only {len(data)} calibration samples (< {MIN_SAMPLES}); ranges may not "
                       "represent real inputs — give more")
        if not calib.settle.settled:
            self._warn(f"int8: calibration ranges have not settled: {calib.settle.describe()}; give more "
                       "calibration samples")

        low_sqnr = low_resolution_layers(proto, nodes, calib.sqnr_db, options.min_sqnr_db) if guard else {}
        if low_sqnr:
            kept = quantizable_nodes(proto, scheme, (*options.exclude_nodes, *low_sqnr), options.exclude_op_types)
            if any(n.name in set(kept) and n.op_type in WEIGHTED_OPS for n in proto.graph.node):
                nodes = kept
                notes.append(f"int8: {len(low_sqnr)} layer(s) kept in float, their input quantizes below "
                             f"{options.min_sqnr_db:g} dB SQNR: " + ", ".join(
                                 f"{name} ({db:.1f} dB)" for name, db in list(low_sqnr.items())[:8]))
            else:
                low_sqnr = {}  # every layer is low-resolution: quantize anyway, the budget decides

        source = proto  # the float model the QDQ graph is written from (bias correction edits its biases)

        def quantize(layers) -> onnx.ModelProto:
            return quantize_qdq(source, scheme, calib.ranges, layers)

        quantized = quantize(nodes)
        if options.bias_correction:
            weighted_nodes = [n.name for n in proto.graph.node if n.name in set(nodes) and n.op_type in WEIGHTED_OPS]
            shifts = bias_correction.measure_shifts(quantized, proto, data, weighted_nodes, options.calib_batch_size)
            source, corrected = bias_correction.apply_shifts(proto, shifts)
            after = {}
            if corrected:
                quantized = quantize(nodes)
                after = bias_correction.measure_shifts(quantized, proto, data, corrected, options.calib_batch_size)
            methods.append(bias_correction.report(shifts, after, corrected))
        float_layers: tuple[str, ...] = ()
        stats: dict = {"scheme": f"{scheme.target}: {scheme.describe()}", "calib_method": method,
                       "calib_samples": calib.samples, "calib_settle": calib.settle.describe(),
                       "layers_in_float_low_sqnr": {name: round(db, 1) for name, db in low_sqnr.items()},
                       "methods": methods}
        if options.fallback and context.eval is not None and context.max_accuracy_drop is not None:
            evaluator = Evaluator(proto, context.eval, metric=context.metric)
            weighted = [n.name for n in proto.graph.node if n.name in set(nodes) and n.op_type in WEIGHTED_OPS]
            writes_outputs = [op for op in scheme.op_types if op not in scheme.outputs_not_quantized
                              and op not in FLOAT_OUTPUT_OK]
            candidates = edits_of(quantized, source, weighted, nodes, writes_outputs)
            outcome = run_fallback(candidates, weighted, evaluator, context.max_accuracy_drop,
                                   max_layers=options.max_float_layers, first=quantized,
                                   latency=lambda models: batch1_latency_ms(models, context.eval))
            quantized, float_layers = outcome.model, outcome.float_layers
            stats["fallback"] = [step.describe() for step in outcome.steps]
            stats["fallback_seconds"] = round(outcome.seconds, 1)
            if not outcome.met:
                notes.append(f"int8 fallback could not meet the {context.max_accuracy_drop} point budget; "
                             f"best drop {outcome.drop:.3f} points")
        q_nodes = sum(1 for n in quantized.graph.node if n.op_type == "QuantizeLinear")
        stats.update({"layers_quantized": sum(1 for n in proto.graph.node if n.name in set(nodes)
                                              and n.op_type in WEIGHTED_OPS and n.name not in set(float_layers)),
                      "quantize_nodes": q_nodes, "layers_in_float": list(float_layers)})
        if options.qdq_folds and scheme.target == "cpu":  # exact; after the fallback, on the model written
            methods.append(qdq_folds.fold(quantized).report())
        if context.target.kind == "trt":
            problems = check_trt_qdq(quantized)
            stats["trt_check"] = "ok" if not problems else f"{len(problems)} problem(s)"
            notes += [f"TensorRT check: {p}" for p in problems[:10]]
        return self.result(large.from_proto(quantized), True, stats, notes)

    def _calibration_data(self, model: ir.Model) -> DataSet:
        options, context = self.options, self.context
        data = context.calib
        if data is None:
            if not options.calib_random:
                raise InputError("int8 needs calibration data: give --calib-data PATH (representative inputs), "
                                 "or --calib-random to calibrate on random inputs (poor accuracy)")
            data = probe_data(input_specs(model), count=options.calib_random_samples, seed=0)
            self._warn("int8: calibrating on RANDOM inputs (--calib-random); ranges will not match real data "
                       "and accuracy may be poor — give --calib-data for a model you ship")
        if options.calib_samples is not None:
            data = data.take(options.calib_samples)
        return data

    def _warn(self, message: str) -> None:
        """Print now (long runs) and list once in the report's warnings (not again in the row's notes)."""
        self.context.warnings.add(message, condense=False)
        stderr.print(f"[yellow]warning:[/yellow] {message}")
