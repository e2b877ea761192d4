"""graphopt benchmark: every reference model × every variant, measured side by side in one run.

    python tools/bench.py [--models digits-cnn,resnet18-224] [--variants fp32,onnxsim,ort-int8-tuned]
                          [--runs 20] [--warmup 5] [--threads 1,2] [--batch 1] [--out bench_results/] [--keep-models]
    python tools/bench.py --list

For each model (``models/registry.py``; on-demand models are built on first use) and each variant it records:
file size and its ratio to fp32, ONNX Runtime CPU latency at batch ``--batch`` (default 1; the first samples of the eval data) with ``--threads`` intra-op threads
(one count or a list: each variant is converted and evaluated once and timed at every count; median of ``--runs`` runs after ``--warmup`` warm-up runs, all variants of a model interleaved round-robin,
see ``tools/bench_lib.py``) and its ratio to fp32, the model's quality check on its eval data (accuracy with
labels, or cosine / argmax agreement against the fp32 outputs; NaN when an output is not finite), node count,
Cast nodes added, and conversion time. It writes ``<out>/bench.json`` and ``<out>/bench.md`` and prints the
markdown.

Variants (``VARIANTS``; a later issue adds one with :func:`variant`). A variant that cannot apply to a model
(a pass not registered yet, a peer tool refusing the model) is listed as skipped with the reason:

* ``fp32`` — the model as given (the baseline of every ratio);
* ``graphopt-simplify`` / ``onnxsim`` — graphopt's simplify pass, and onnxsim alone;
* ``graphopt-int8`` — graphopt passes ``simplify, int8``, target cpu, with the model's calib and eval data;
* ``graphopt-int8-before`` — the same with the methods of issue 12 turned off
  (:data:`GRAPHOPT_INT8_BEFORE_ISSUE12`: SmoothQuant, the outlier split, float attention MatMuls, the range
  choice, cross-layer equalization, bias correction, the GELU fusion);
* ``graphopt-int8-smoothquant`` — ``graphopt-int8`` with the opt-in SmoothQuant (``--smoothquant``);
* ``graphopt-int8-only-range-choice`` / ``-only-equalization`` / ``-only-bias-correction`` — ``graphopt-int8-before``
  plus that one recogniser method; ``graphopt-int8-recogniser-methods`` — plus all three (the ablation);
  ``graphopt-int8-no-gelu-fusion`` — ``graphopt-int8`` with the five-node GELUs left as they are;
  ``graphopt-int8-no-silu-fusion`` — ``graphopt-int8`` with the SiLUs left as Sigmoid + Mul;
* ``ort-int8-default`` — ``onnxruntime.quantization.quantize_static(model, out, reader)``, every option at
  its default (QDQ, QInt8 activations and weights, per-tensor, MinMax), on the model as given;
* ``ort-int8-tuned`` — the fastest accurate settings found by hand for this CPU (x86 with AVX-512 VNNI),
  see :data:`ORT_TUNED`, per model where another was better (:data:`ORT_TUNED_PER_MODEL`); a model below
  opset 13 is upgraded first (per-channel weights need it); its Percentile calibrator gets the first :data:`ORT_HISTOGRAM_CALIB_SAMPLES` samples;
* ``ort-int8-dynamic`` — ``onnxruntime.quantization.quantize_dynamic(model, out)``, defaults (no calibration);
* ``occ-fp16`` — onnxconverter-common ``convert_float_to_float16(keep_io_types=True)``;
* ``occ-fp16-mixed`` — onnxconverter-common ``auto_convert_mixed_precision`` (keep_io_types, rtol 0.01,
  atol 0.001, checked on the first eval samples);
* ``graphopt-fp16`` / ``graphopt-bf16`` — graphopt passes ``simplify, fp16`` (precision bf16 for the latter);
* ``graphopt-prune-0.3`` / ``-0.5`` — graphopt passes ``simplify, prune`` (channel, that amount);
  ``graphopt-prune-0.5+int8`` adds ``int8``; ``graphopt-unstructured-0.5`` / ``-0.8`` (``-sparse``: stored as
  sparse initializers) and ``graphopt-2:4`` — the other prune modes (``tools/bench_prune.py`` makes the
  pruning tables from these).

Models with ground-truth texts (:data:`TEXT_DECODERS`: ``ppocr-rec``) also get the character error rate of
each variant's decoded text ("CER %") and the share of lines decoded exactly as fp32 ("text = fp32").

Calibration for the ORT peers streams the model's calib file one sample at a time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import io
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python tools/bench.py` puts tools/ first on the path, not the repository
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from graphopt.console import WarningLog, captured_warnings  # noqa: E402
from graphopt.data import DataSet, load_data  # noqa: E402
from graphopt.engines.ort import build as build_engine  # noqa: E402
from graphopt.errors import first_line  # noqa: E402
from graphopt.versions import library_versions  # noqa: E402
from tools.bench_lib import (  # noqa: E402
    format_number,
    graph_facts,
    interleaved_latency,
    markdown_table,
    measure_quality,
    median_ms,
)

EVAL_BATCH = 16


class Skip(Exception):
    """A variant does not apply to this model; the message says why (one line)."""


@dataclasses.dataclass(frozen=True)
class Converted:
    path: Path
    details: dict = dataclasses.field(default_factory=dict)
    """Anything worth keeping in the JSON (a graphopt report's pass rows, the options used)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """One model to benchmark: its files and its registry check."""

    name: str
    model: Path
    calib: Path | None
    eval: Path
    check: str


Convert = Callable[[Case, Path], Converted]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    family: str
    """What it does: ``baseline``, ``simplify``, ``int8``, ``fp16``."""
    tool: str
    """Who does it: ``graphopt``, ``onnxsim``, ``onnxruntime``, ``onnxconverter-common`` or ``-``."""
    convert: Convert


VARIANTS: dict[str, Variant] = {}


def variant(name: str, family: str, tool: str) -> Callable[[Convert], Convert]:
    """Register ``convert(case, out_path) -> Converted`` as variant ``name``; raise :class:`Skip` to skip."""
    def register(func: Convert) -> Convert:
        VARIANTS[name] = Variant(name, family, tool, func)
        return func

    return register


# ------------------------------------------------------------------------------------------ variants
@variant("fp32", "baseline", "-")
def _fp32(case: Case, out: Path) -> Converted:
    return Converted(case.model)


@variant("graphopt-simplify", "simplify", "graphopt")
def _graphopt_simplify(case: Case, out: Path) -> Converted:
    return _graphopt(case, out, {"passes": ["simplify"]})


@variant("onnxsim", "simplify", "onnxsim")
def _onnxsim(case: Case, out: Path) -> Converted:
    import onnxsim

    simplified, ok = onnxsim.simplify(onnx.load(str(case.model)))
    if not ok:
        raise Skip("onnxsim's own output check failed")
    onnx.save(simplified, str(out))
    return Converted(out)


@variant("graphopt-int8", "int8", "graphopt")
def _graphopt_int8(case: Case, out: Path) -> Converted:
    _require_pass("int8")
    return _graphopt(case, out, {"passes": ["simplify", "int8"]})


GRAPHOPT_INT8_BEFORE_ISSUE12 = {"smoothquant": False, "outlier_split": False, "float_attention_matmuls": False,
                                "range_choice": False, "equalization": False, "bias_correction": False,
                                "gelu_fusion": False, "silu_fusion": False}
"""The int8 options that turn off every method issue 12 added (what ``main`` ran before it)."""


def _int8_ablation(name: str, options: dict) -> None:
    """Register ``graphopt-int8-<name>``: graphopt int8 with ``options`` (the issue-12 method ablation)."""
    def convert(case: Case, out: Path) -> Converted:
        _require_pass("int8")
        return _graphopt(case, out, {"passes": ["simplify", {"int8": options}]})

    variant(f"graphopt-int8-{name}", "int8", "graphopt")(convert)


_RECOGNISER_METHODS = ("range_choice", "equalization", "bias_correction")
for _method in _RECOGNISER_METHODS:  # each recogniser method alone, the others off
    _int8_ablation(f"only-{_method.replace('_', '-')}",
                   {**GRAPHOPT_INT8_BEFORE_ISSUE12, **{m: m == _method for m in _RECOGNISER_METHODS}})
_int8_ablation("recogniser-methods", {**GRAPHOPT_INT8_BEFORE_ISSUE12, **dict.fromkeys(_RECOGNISER_METHODS, True)})
_int8_ablation("no-gelu-fusion", {"gelu_fusion": False})
_int8_ablation("no-silu-fusion", {"silu_fusion": False})
_int8_ablation("no-qdq-folds", {"qdq_folds": False})


@variant("graphopt-int8-before", "int8", "graphopt")
def _graphopt_int8_before(case: Case, out: Path) -> Converted:
    _require_pass("int8")
    return _graphopt(case, out, {"passes": ["simplify", {"int8": GRAPHOPT_INT8_BEFORE_ISSUE12}]})


@variant("graphopt-int8-smoothquant", "int8", "graphopt")
def _graphopt_int8_smoothquant(case: Case, out: Path) -> Converted:
    _require_pass("int8")
    return _graphopt(case, out, {"passes": ["simplify", {"int8": {"smoothquant": True}}]})


@variant("ort-int8-default", "int8", "onnxruntime")
def _ort_int8_default(case: Case, out: Path) -> Converted:
    from onnxruntime.quantization import quantize_static

    quantize_static(str(case.model), str(out), _calibration_reader(case))
    return Converted(out, {"options": "defaults (QDQ, QInt8/QInt8, per-tensor, MinMax), no pre-processing"})


ORT_TUNED = {
    "pre_process": True,
    "quant_format": "QDQ",
    "activation_type": "QUInt8",
    "weight_type": "QInt8",
    "per_channel": True,
    "reduce_range": False,
    "calibrate_method": "Percentile",
    "extra_options": {"CalibPercentile": 99.99},
}
"""The hand-tuned ``quantize_static`` settings of ``ort-int8-tuned``.

Chosen on resnet18-224 with ORT 1.31 (2 threads, batch 1, AVX-512 VNNI CPU; latency as a ratio to fp32 from
interleaved medians, quality as argmax agreement / mean cosine with fp32 on the 32 eval images).

Round 1, the graph layout (an earlier build of the same network, 32 calib images, MinMax):

=======================================================  =========  ==========================
settings                                                 latency ×  argmax agreement / cosine
=======================================================  =========  ==========================
defaults, model as given                                 0.81       87.5 % / 0.9970
defaults after ``quant_pre_process``                     0.71       87.5 % / 0.9980
pre-process, QDQ, U8 act / S8 weight, per-channel        0.27-0.38  96.9 % / 0.9987  ← kept
same, QOperator format                                   0.38       96.9 % / 0.9987
same, S8 activations                                     1.02       90.6 % / 0.9987
same, per-tensor weights                                 0.36       87.5 % / 0.9980
same, no pre-processing (BN not folded first)            0.35       87.5 % / 0.9972
same, reduce_range=True                                  0.26       90.6 % / 0.9979
same, QuantizeBias=False / WeightSymmetric=False         0.34-0.36  93.8 / 96.9 %
same, CalibMovingAverage=True                            0.40       78.1 %
=======================================================  =========  ==========================

Round 2, the calibration of the kept layout (the current build, all 64 calib images; the graph, hence the
latency, does not change): MinMax 84.4 % / 0.99870; Entropy 84.4 % / 0.99870; MinMax with moving average
81.2 % / 0.99847; Percentile 99.999 90.6 % / 0.99905; **Percentile 99.99 93.8 % / 0.99911** (kept);
Percentile 99.9 84.4 % / 0.99652. Percentile costs about 2× MinMax's calibration time.

Why: ORT's x86 int8 kernels (QLinearConv / MatMulInteger after QDQ fusion) are built for u8 activations ×
s8 weights (VNNI ``vpdpbusd``); s8×s8 falls back to slow paths. Pre-processing (symbolic shape inference and
ORT's fp32 graph optimisations, which fold BatchNormalization into Conv) must come first so the folded weights
are what gets quantized; per-channel weights recover the accuracy per-tensor loses; clipping the top 0.01 % of
activation values gives the 8 bits to the range that matters.
"""


ORT_TUNED_PER_MODEL = {
    "ppocr-rec": {**ORT_TUNED, "calibrate_method": "Entropy", "extra_options": {}},
}
"""Models whose best hand-tuned ``quantize_static`` settings differ from :data:`ORT_TUNED`.

``ppocr-rec``: Entropy calibration (u8 activations, s8 per-channel weights, pre-processed, QDQ), the best of
the ORT settings tried on the PP-OCRv6 recogniser in an earlier round of issue 12 (character error rate
9.76 % there against 20.3 % with the defaults); per-channel weights need opset ≥ 13, so the model (opset
11) is upgraded first (:func:`_ort_opset13`)."""


def _ort_opset13(model: Path, out: Path) -> tuple[Path, str | None]:
    """``model`` upgraded to opset 13 with onnx's version converter when it is older (ORT's quantizer writes
    per-channel ``DequantizeLinear(axis=…)``, which opset < 13 lacks); the model as given otherwise."""
    import onnx.version_converter

    proto = onnx.load(str(model))
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset >= 13:
        return model, None
    onnx.save(onnx.version_converter.convert_version(proto, 13), str(out))
    return out, f"upgraded from opset {opset} to 13 first"


@variant("ort-int8-tuned", "int8", "onnxruntime")
def _ort_int8_tuned(case: Case, out: Path) -> Converted:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    tuned = ORT_TUNED_PER_MODEL.get(case.name, ORT_TUNED)
    given, upgraded = _ort_opset13(case.model, out.with_name(out.stem + ".opset13.onnx"))
    source, note = _ort_pre_process(given, out.with_name(out.stem + ".pre.onnx"))
    options = dict(
        quant_format=QuantFormat[tuned["quant_format"]],
        activation_type=QuantType[tuned["activation_type"]],
        weight_type=QuantType[tuned["weight_type"]],
        per_channel=tuned["per_channel"],
        reduce_range=tuned["reduce_range"],
        calibrate_method=CalibrationMethod[tuned["calibrate_method"]],
    )
    try:
        quantize_static(str(source), str(out), _calibration_reader(case, ORT_HISTOGRAM_CALIB_SAMPLES),
                        extra_options=dict(tuned["extra_options"]), **options)
        build_engine(onnx.load(str(out)))
    except Exception as exc:  # e.g. ORT's fp32 fusions leave a graph its quantizer turns invalid
        if source == given:
            raise
        note = f"quantizing the pre-processed model failed ({first_line(exc)}); quantized the model as given"
        quantize_static(str(given), str(out), _calibration_reader(case, ORT_HISTOGRAM_CALIB_SAMPLES),
                        extra_options=dict(tuned["extra_options"]), **options)
    details = {"options": tuned, "calib_samples": f"first {ORT_HISTOGRAM_CALIB_SAMPLES} (ORT keeps them all in memory)"}
    notes = [n for n in (upgraded, note) if n]
    if notes:
        details["note"] = "; ".join(notes)
    return Converted(out, details)


@variant("ort-int8-dynamic", "int8", "onnxruntime")
def _ort_int8_dynamic(case: Case, out: Path) -> Converted:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(case.model), str(out))
    return Converted(out, {"options": "quantize_dynamic defaults (QInt8 weights per-tensor, activations quantized "
                                      "per run: DynamicQuantizeMatMul / MatMulInteger), no pre-processing"})


@variant("ort-int8-dynamic-simplified", "int8", "onnxruntime")
def _ort_int8_dynamic_simplified(case: Case, out: Path) -> Converted:
    """``quantize_dynamic`` on graphopt's simplified model: how much of graphopt's lead is ``simplify``'s (the
    residual ``Sum`` that keeps onnxruntime off its slow CPU SkipLayerNormalization) rather than int8's."""
    from onnxruntime.quantization import quantize_dynamic

    simplified = out.with_name(out.stem + ".simplified.onnx")
    _graphopt(case, simplified, {"passes": ["simplify"]})
    try:
        # without the shapes simplify wrote: quantize_dynamic transposes a Gemm's transB weight and then
        # fails its own shape check against them (ResNet-18's classifier: "512 vs 1000")
        model = onnx.load(str(simplified))
        del model.graph.value_info[:]
        onnx.save(model, str(simplified))
        quantize_dynamic(str(simplified), str(out))
    finally:
        simplified.unlink(missing_ok=True)
    return Converted(out, {"options": "graphopt simplify (cpu), then quantize_dynamic defaults"})


@variant("occ-fp16", "fp16", "onnxconverter-common")
def _occ_fp16(case: Case, out: Path) -> Converted:
    from onnxconverter_common import float16

    converted = float16.convert_float_to_float16(onnx.load(str(case.model)), keep_io_types=True)
    onnx.save(converted, str(out))
    return Converted(out)


@variant("occ-fp16-mixed", "fp16", "onnxconverter-common")
def _occ_fp16_mixed(case: Case, out: Path) -> Converted:
    from onnxconverter_common import auto_mixed_precision

    data = load_data(case.eval).take(4)
    feeds = {name: array for name, array in data.inputs.items()}
    converted = auto_mixed_precision.auto_convert_mixed_precision(
        onnx.load(str(case.model)), feeds, rtol=0.01, atol=0.001, keep_io_types=True)
    onnx.save(converted, str(out))
    return Converted(out, {"options": {"rtol": 0.01, "atol": 0.001, "keep_io_types": True, "samples": 4}})


@variant("graphopt-fp16", "fp16", "graphopt")
def _graphopt_fp16(case: Case, out: Path) -> Converted:
    _require_pass("fp16")
    return _graphopt(case, out, {"passes": ["simplify", "fp16"]}, target="cuda")


@variant("graphopt-bf16", "fp16", "graphopt")
def _graphopt_bf16(case: Case, out: Path) -> Converted:
    _require_pass("fp16")
    return _graphopt(case, out, {"passes": ["simplify", {"fp16": {"precision": "bf16"}}]}, target="cuda")


def _prune_variant(name: str, options: dict, then: tuple = ()) -> None:
    """Register ``graphopt-<name>``: graphopt passes ``simplify, prune(options), *then`` (target cpu)."""
    def convert(case: Case, out: Path) -> Converted:
        _require_pass("prune")
        return _graphopt(case, out, {"passes": ["simplify", {"prune": options}, *then]})

    variant(f"graphopt-{name}", "prune", "graphopt")(convert)


for _amount in (0.3, 0.5):
    _prune_variant(f"prune-{_amount}", {"amount": _amount})
_prune_variant("prune-0.5+int8", {"amount": 0.5}, ("int8",))
for _amount in (0.5, 0.8):
    _prune_variant(f"unstructured-{_amount}", {"amount": _amount, "mode": "unstructured"})
    _prune_variant(f"unstructured-{_amount}-sparse", {"amount": _amount, "mode": "unstructured", "store": "sparse"})
_prune_variant("2:4", {"amount": 0.5, "mode": "2:4"})


# ------------------------------------------------------------------------------------------ variant helpers
def _require_pass(name: str) -> None:
    from graphopt.passes import PASS_REGISTRY

    if name not in PASS_REGISTRY:
        raise Skip(f"graphopt pass '{name}' is not registered yet")


def _graphopt(case: Case, out: Path, pipeline: dict, target: str = "cpu") -> Converted:
    """``graphopt.api.optimize`` with ``pipeline``, no cache, the model's calib and eval data.

    fp16/bf16 variants use target ``cuda``: on ``cpu`` graphopt keeps every op without a native CPU
    fp16 kernel in fp32 (nearly all of them), so the GPU layout is the one worth measuring; its
    numerics are checked here by emulation and its CPU latency is only indicative."""
    from graphopt.api import optimize
    from graphopt.errors import GraphoptError
    from graphopt.pipeline import Pipeline

    try:
        result = optimize(case.model, out, pipeline=Pipeline.from_dict({**pipeline, "target": target}),
                          calib_data=case.calib, eval_data=case.eval, cache=False, latency_budget=0)
    except GraphoptError as exc:
        raise Skip(f"graphopt refused: {first_line(exc)}") from exc
    if result.output_path is None:
        raise Skip("graphopt wrote no model (quality gate missed)")
    rows = [{"pass": r.name, "status": r.status, "seconds": round(r.seconds, 3), "stats": r.stats,
             "notes": r.notes, "metric": r.metric_summary} for r in result.report.rows]
    return Converted(result.output_path, {"passes": rows, "warnings": result.report.warnings})


ORT_HISTOGRAM_CALIB_SAMPLES = 64
"""Samples ORT's Percentile / Entropy calibrators get (graphopt and ORT MinMax get them all). ORT keeps
every sample's activations in memory — the problem graphopt's streaming calibration solves — and on
the 256 PP-OCRv6 rec calibration lines it passed 24 GB and was OOM-killed."""


def _calibration_reader(case: Case, limit: int | None = None):
    """An ORT ``CalibrationDataReader`` over the calib file (its first ``limit`` samples), one sample per call."""
    from onnxruntime.quantization import CalibrationDataReader

    if case.calib is None:
        raise Skip("model has no calibration data")
    data = load_data(case.calib)
    if limit is not None:
        data = data.take(limit)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = data.batches(1)

        def get_next(self):
            return next(self.batches, None)

    return Reader()


def _ort_pre_process(model: Path, out: Path) -> tuple[Path, str | None]:
    """ORT's ``quant_pre_process`` (symbolic shape inference + fp32 optimisation); without symbolic shape
    inference when that fails on the model."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from graphopt.scratch import scratch_cwd

    model, out = Path(model).resolve(), Path(out).resolve()
    try:
        with scratch_cwd():  # symbolic shape inference drops temp files into the working directory
            quant_pre_process(str(model), str(out))
        return out, None
    except Exception as exc:
        first = first_line(exc)
    with scratch_cwd():
        quant_pre_process(str(model), str(out), skip_symbolic_shape=True)
    return out, f"symbolic shape inference failed ({first}); pre-processed without it"


# ------------------------------------------------------------------------------------------ the run
def load_case(name: str) -> Case:
    """Build (or find) a registry model; raises :class:`Skip` when it cannot be built here."""
    from models.registry import build_model, get_model

    entry = get_model(name)
    try:
        model, calib, evaluation = build_model(name)
    except ImportError as exc:
        raise Skip(first_line(exc)) from exc
    if evaluation is None:
        raise Skip("model has no eval data")
    return Case(name, Path(model), Path(calib) if calib else None, Path(evaluation), entry.check)


def bench_model(case: Case, variant_names: list[str], workdir: Path, runs: int, warmup: int,
                threads: int | Sequence[int], batch: int = 1) -> dict:
    """Convert, evaluate and time every variant of one model; returns its JSON section.

    ``threads``: one intra-op thread count or several. Each variant is converted and evaluated once, then
    timed once per count (``latency[count]``; ``latency_ms`` and ``latency_ratio`` hold the first count)."""
    from tools.bench_lib import feeds_for

    thread_counts = [threads] if isinstance(threads, int) else list(threads)
    threads = thread_counts[0]
    evaluation = load_data(case.eval)
    texts = _text_labels(case)
    names = ["fp32", *[v for v in variant_names if v != "fp32"]]
    rows: dict[str, dict] = {}
    engines = {}
    reference: dict[str, np.ndarray] = {}
    paths: dict[str, Path] = {}
    for name in names:
        spec = VARIANTS[name]
        row = {"variant": name, "family": spec.family, "tool": spec.tool, "status": "ok"}
        rows[name] = row
        log = WarningLog()
        started = time.perf_counter()
        try:
            with captured_warnings(log), contextlib.redirect_stdout(io.StringIO()):
                converted = spec.convert(case, workdir / f"{name}.onnx")
            row["convert_s"] = 0.0 if name == "fp32" else time.perf_counter() - started
            row["details"] = converted.details
            paths[name] = converted.path
            facts = graph_facts(converted.path)
            row.update(file_bytes=facts.file_bytes, nodes=facts.nodes, casts=facts.casts, op_counts=facts.op_counts)
            try:
                engine = build_engine(onnx.load(str(converted.path)), threads=threads, spinning=False)
            except Exception as exc:
                if spec.tool != "graphopt":
                    raise
                # a GPU-target layout (e.g. bf16 for --target cuda) that ORT's CPU provider cannot load
                checked = "; ".join(r["metric"] for r in converted.details.get("passes", []) if r.get("metric"))
                raise Skip(f"ORT CPU cannot run it ({first_line(exc)}); graphopt's emulated check: {checked}") from exc
            row["providers"] = engine.providers
            got = _run_eval(engine, evaluation, feeds_for)
            if name == "fp32":
                reference = got
            _judge(case, row, reference, got, evaluation, texts)  # then drop the outputs: only fp32's are kept
            engines[name] = engine
        except Skip as exc:
            row.update(status="skipped", reason=str(exc))
        except Exception as exc:  # a peer tool or our own pass failing on this model is a result, not a crash
            row.update(status="error", reason=f"{type(exc).__name__}: {first_line(exc)}",
                       traceback=traceback.format_exc(limit=6))
        if log.lines():
            row["warnings"] = log.lines()
        _progress(f"  {case.name} / {name}: {row['status']}"
                  + (f" ({row['reason']})" if "reason" in row else f" in {row.get('convert_s', 0):.1f} s"))
    if "fp32" not in engines:
        raise RuntimeError(f"{case.name}: the fp32 model itself does not run: {rows['fp32'].get('reason')}")


    one = evaluation.take(batch).inputs
    for count in thread_counts:
        if count != threads:  # the sessions of the first count served the evaluation too
            engines = {name: build_engine(onnx.load(str(paths[name])), threads=count, spinning=False)
                       for name in engines}
        runners = {}
        for name, engine in engines.items():
            feeds = feeds_for(engine.session, one)
            runners[name] = (lambda session, f: lambda: session.run(None, f))(engine.session, feeds)
        _progress(f"  {case.name}: timing {len(runners)} variants × {runs} interleaved runs, {count} thread(s)")
        timings = interleaved_latency(runners, runs=runs, warmup=warmup)
        base_ms = median_ms(timings["fp32"])
        for name, seconds in timings.items():
            rows[name].setdefault("latency", {})[str(count)] = {
                "ms": median_ms(seconds), "ratio": median_ms(seconds) / base_ms,
                "runs_ms": [round(1e3 * s, 4) for s in seconds]}
    base = rows["fp32"]
    for row in rows.values():
        first = row.get("latency", {}).get(str(threads))
        if first is not None:
            row["latency_ms"], row["latency_ratio"], row["latency_runs_ms"] = first["ms"], first["ratio"], first["runs_ms"]
    for row in rows.values():
        if "file_bytes" in row:
            row["size_ratio"] = row["file_bytes"] / base["file_bytes"]
            row["casts_added"] = row["casts"] - base["casts"]
    return {"check": case.check, "model": str(case.model), "eval": str(case.eval), "eval_samples": len(evaluation),
            "rows": [rows[n] for n in names]}


def _judge(case: Case, row: dict, reference: dict[str, np.ndarray], outputs: dict[str, np.ndarray],
           evaluation: DataSet, texts: list[str] | None) -> None:
    """Quality of one variant's eval outputs against fp32's (and against the texts, when the model has them)."""
    try:
        row["quality"] = measure_quality(case.check, reference, outputs, evaluation.labels).to_dict()
    except ValueError as exc:
        row.update(status="error", reason=f"quality: {first_line(exc)}")
    if texts is not None:
        row["text"] = _text_quality(case.name, texts, reference, outputs)


TEXT_DECODERS = {"ppocr-rec": "models.text_lines"}
"""Models whose eval data carry ground-truth texts (``<eval>.txt`` next to the ``.npz``) → the module that
decodes their outputs (``decode(scores) -> list[str]``) and scores them (``character_error_rate``)."""


def _text_labels(case: Case) -> list[str] | None:
    if case.name not in TEXT_DECODERS:
        return None
    from models.text_lines import read_labels

    labels = read_labels(case.eval)
    return labels if labels is not None and len(labels) == len(load_data(case.eval)) else None


def _text_quality(model: str, labels: list[str], reference: dict[str, np.ndarray],
                  candidate: dict[str, np.ndarray]) -> dict:
    """Character error rate of the decoded texts against ``labels``, and the share of lines decoded exactly
    as fp32 decodes them."""
    import importlib

    module = importlib.import_module(TEXT_DECODERS[model])
    name = next(n for n, a in reference.items() if np.asarray(a).ndim == 3)
    ref, got = module.decode(reference[name]), module.decode(candidate[name])
    return {"cer": module.character_error_rate(labels, got),
            "text_equals_fp32": float(np.mean([a == b for a, b in zip(ref, got)])), "lines": len(labels)}


def _run_eval(engine, evaluation: DataSet, feeds_for) -> dict[str, np.ndarray]:
    batches = (feeds_for(engine.session, feeds) for feeds in evaluation.batches(EVAL_BATCH))
    return engine.run_batches(batches)


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(model_names: list[str], variant_names: list[str], out: Path, runs: int, warmup: int, threads: int | list[int],
        keep_models: bool, batch: int = 1) -> dict:
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    started = time.perf_counter()
    result = {
        "meta": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count()},
            "versions": library_versions(),
            "runs": runs, "warmup": warmup, "threads": threads, "batch": batch,
            "variants": variant_names,
        },
        "models": {},
    }
    for model_name in model_names:
        _progress(f"{model_name}:")
        try:
            case = load_case(model_name)
        except Skip as exc:
            result["models"][model_name] = {"status": "skipped", "reason": str(exc)}
            _progress(f"  skipped: {exc}")
            continue
        if keep_models:
            workdir = out / "models" / model_name
            workdir.mkdir(parents=True, exist_ok=True)
            result["models"][model_name] = bench_model(case, variant_names, workdir, runs, warmup, threads, batch)
        else:
            with tempfile.TemporaryDirectory(prefix=f"bench-{model_name}-") as tmp:
                result["models"][model_name] = bench_model(case, variant_names, Path(tmp), runs, warmup, threads, batch)
    result["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    return result


# ------------------------------------------------------------------------------------------ output
HEADER = ["variant", "size MB", "size ×", "latency ms", "latency ×", "quality", "Δ pts", "max rel err",
          "nodes", "Cast +", "convert s", "note"]


def _thread_counts(meta: dict) -> list[int]:
    threads = meta["threads"]
    return [threads] if isinstance(threads, int) else list(threads)


def render_markdown(result: dict) -> str:
    meta = result["meta"]
    counts = _thread_counts(meta)
    parts = [
        "# graphopt benchmark",
        "",
        f"{meta['date']} · {meta['machine']['processor']} · {meta['machine']['cpus']} CPUs · onnxruntime "
        f"{meta['versions'].get('onnxruntime-gpu', meta['versions'].get('onnxruntime', '?'))} CPU provider, "
        f"{', '.join(map(str, counts))} thread(s) (no spin-wait), batch {meta['batch']} · latency = median of "
        f"{meta['runs']} interleaved runs after {meta['warmup']} warm-up · ratios to fp32 of the same model in the same run",
    ]
    for model_name, section in result["models"].items():
        parts += ["", f"## {model_name}"]
        if section.get("status") == "skipped":
            parts += ["", f"skipped: {section['reason']}"]
            continue
        texts = any("text" in row for row in section["rows"])
        header = _header(counts, texts)
        lines = next((row["text"]["lines"] for row in section["rows"] if "text" in row), None)
        parts += ["", f"check: {section['check']} on {section['eval_samples']} eval samples"
                  + (f"; CER = character error rate of the decoded text against the {lines} lines' ground truth, "
                     "text = fp32: lines decoded exactly as fp32 decodes them" if texts else ""), ""]
        parts.append(markdown_table(header, [_table_row(row, counts, texts) for row in section["rows"]]))
    return "\n".join(parts) + "\n"


def _header(counts: list[int], texts: bool) -> list[str]:
    latency = ["latency ms", "latency ×"] if len(counts) == 1 else \
        [cell for count in counts for cell in (f"ms ({count} thr)", f"× ({count} thr)")]
    return [*HEADER[:3], *latency, *HEADER[5:6], *(["CER %", "text = fp32"] if texts else []), *HEADER[6:]]


def _table_row(row: dict, counts: list[int] | None = None, texts: bool = False) -> list[str]:
    counts = counts or [0]
    width = len(_header(counts, texts))
    if row["status"] != "ok" and "latency_ms" not in row:
        return [row["variant"], *["–"] * (width - 2), f"{row['status']}: {_short(row.get('reason', ''))}"]
    quality = row.get("quality") or {}
    value = quality.get("value")
    if value is None:
        shown = "–"
    elif quality.get("metric") == "cosine":
        shown = format_number(value, 5)
    else:
        shown = format_number(100 * value if not math.isnan(value) else value, 2) + ("%" if not math.isnan(value) else "")
    outputs = [(name, m.get("cosine", m.get("argmax_agreement"))) for name, m in quality.get("per_output", {}).items()]
    if len(outputs) > 1 and all(v is not None for _, v in outputs):  # show every output, not only the worst
        shown = ", ".join(f"{name} {format_number(v if quality['metric'] == 'cosine' else 100 * v, 5 if quality['metric'] == 'cosine' else 2)}"
                          for name, v in outputs)
    matches = [m["ctc_text_match"] for m in quality.get("per_output", {}).values() if "ctc_text_match" in m]
    if matches and not texts:
        shown += f" (text {format_number(100 * min(matches), 2)}%)"
    note = _short(row.get("reason", "")) if row["status"] != "ok" else ""
    if not note and quality and not quality.get("finite", True):
        note = "non-finite outputs"
    if len(counts) == 1:
        latency = [format_number(row["latency_ms"], 3 if row["latency_ms"] >= 1 else 4),
                   format_number(row["latency_ratio"], 3)]
    else:
        latency = []
        for count in counts:
            timing = row.get("latency", {}).get(str(count))
            latency += ["–", "–"] if timing is None else [
                format_number(timing["ms"], 3 if timing["ms"] >= 1 else 4), format_number(timing["ratio"], 3)]
    text = row.get("text")
    text_cells = ([format_number(100 * text["cer"], 2), format_number(100 * text["text_equals_fp32"], 1) + "%"]
                  if text else ["–", "–"]) if texts else []
    return [
        row["variant"],
        format_number(row["file_bytes"] / 1e6, 3),
        format_number(row["size_ratio"], 3),
        *latency,
        f"{quality.get('metric', '')} {shown}".strip(),
        *text_cells,
        format_number(quality.get("drop_points"), 2) if quality else "–",
        f"{quality['relative_error']:.2e}" if quality and math.isfinite(quality["relative_error"]) else "–",
        str(row["nodes"]),
        f"{row['casts_added']:+d}",
        format_number(row["convert_s"], 2),
        note,
    ]


def _short(text: str, limit: int = 110) -> str:
    """One table cell: the first ``limit`` characters, pipes escaped (the JSON keeps the full text)."""
    text = text.replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _names(text: str | None, known: list[str], what: str) -> list[str]:
    if not text:
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench.py: unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def main(argv: list[str] | None = None) -> int:
    from models.registry import REFERENCE_MODELS

    parser = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: all: {', '.join(REFERENCE_MODELS)})")
    parser.add_argument("--variants", help=f"comma-separated (default: all: {', '.join(VARIANTS)})")
    parser.add_argument("--runs", type=int, default=20, help="timed runs per variant (median; default 20)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs per variant (default 5)")
    parser.add_argument("--threads", type=_thread_list, default=[2], metavar="N[,N…]",
                        help="onnxruntime intra-op threads; a list (1,2) times every variant at each (default 2)")
    parser.add_argument("--batch", type=int, default=1, help="eval samples per timed run (default 1)")
    parser.add_argument("--out", type=Path, default=Path("bench_results"), help="output folder (default bench_results/)")
    parser.add_argument("--keep-models", action="store_true", help="keep the converted models in <out>/models/")
    parser.add_argument("--list", action="store_true", help="list models and variants, then exit")
    args = parser.parse_args(argv)

    if args.list:
        print("models:   " + ", ".join(REFERENCE_MODELS))
        print("variants: " + ", ".join(f"{v.name} ({v.family}, {v.tool})" for v in VARIANTS.values()))
        return 0
    if args.runs < 1 or args.warmup < 0 or min(args.threads) < 1 or args.batch < 1:
        parser.error("--runs, --threads and --batch must be ≥ 1, --warmup ≥ 0")
    models = _names(args.models, list(REFERENCE_MODELS), "model(s)")
    variants = _names(args.variants, list(VARIANTS), "variant(s)")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.keep_models:
        shutil.rmtree(args.out / "models", ignore_errors=True)
    result = run(models, variants, args.out, args.runs, args.warmup, args.threads, args.keep_models, args.batch)
    markdown = render_markdown(result)
    _write_atomic(args.out / "bench.json", json.dumps(_json_safe(result), indent=1, allow_nan=False) + "\n")
    _write_atomic(args.out / "bench.md", markdown)
    print(markdown)
    _progress(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.md'} in {result['meta']['total_s']} s")
    return 0


def _thread_list(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads takes integers separated by commas, got {text!r}") from None
    if not counts:
        raise argparse.ArgumentTypeError("--threads needs at least one count")
    return list(dict.fromkeys(counts))


def _json_safe(value):
    """Plain JSON: numpy scalars as numbers, paths as strings, NaN / ±Inf as null (rows say ``finite``)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
