"""``graphopt.optimize``: load → check data → run the pipeline → gate → save → report.

This is the whole job; the CLI only parses flags into a :class:`~graphopt.pipeline.Pipeline`
and calls :func:`optimize`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

from graphopt import large
from graphopt.cache import PassCache
from graphopt.console import WarningLog
from graphopt.data import DataSet, input_specs, load_data
from graphopt.errors import InputError
from graphopt.manager import PassManager
from graphopt.model_io import (
    ModelLike,
    check_output_path,
    initializer_bytes,
    load_model,
    model_hash,
    normalize_model,
    save_model,
)
from graphopt.pass_base import GraphoptPass, PassContext
from graphopt.pipeline import Pipeline
from graphopt.report import Report
from graphopt.target import Target, make_target
from graphopt.verify import MetricChoice, check_metric_choice
from graphopt.versions import library_versions

if TYPE_CHECKING:
    from graphopt.engines.build import BuildOptions
    from graphopt.passes.distill import DistillOptions
    from graphopt.passes.fp16 import Fp16Options
    from graphopt.passes.int8 import Int8Options
    from graphopt.passes.prune import PruneOptions

DataLike = str | os.PathLike | DataSet


@dataclasses.dataclass
class OptimizeResult:
    model: ir.Model
    report: Report
    output_path: Path | None
    passed: bool
    """False when the accuracy budget was not met (the CLI exits 1; no output is written)."""


def default_output_path(model_path: Path) -> Path:
    """``<stem>.opt.onnx`` beside the input."""
    return model_path.with_name(f"{model_path.stem}.opt.onnx")


def optimize(
    model: ModelLike,
    output: str | os.PathLike | None = None,
    *,
    passes: list[GraphoptPass] | None = None,
    pipeline: Pipeline | None = None,
    prune: PruneOptions | float | None = None,
    int8: Int8Options | bool | None = None,
    fp16: Fp16Options | bool | None = None,
    distill: DistillOptions | bool | None = None,
    calib: DataLike | None = None,
    calib_data: DataLike | None = None,
    eval_data: DataLike | None = None,
    train_data: DataLike | None = None,
    target: str | Target | None = None,
    max_accuracy_drop: float | None = None,
    metric: MetricChoice | None = None,
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    keep_best: bool = False,
    latency_budget: float | None = None,
    engine: BuildOptions | None = None,
    engine_dir: str | os.PathLike | None = None,
) -> OptimizeResult:
    """Optimize ``model`` and return the new model with its report.

    ``passes`` (or a ``pipeline``) say what to run; by default only ``simplify``. The shortcuts
    ``prune=PruneOptions(...)`` (or an amount), ``distill=DistillOptions(...)``, ``int8=Int8Options(...)`` /
    ``fp16=Fp16Options(...)`` (``True`` for the defaults) run ``simplify`` then those passes in that order,
    as the CLI's ``--prune`` / ``--distill`` / ``--int8`` / ``--fp16`` flags do. ``calib`` is ``calib_data``
    by its short name; ``train_data`` feeds passes that learn (``distill``) and must differ from
    ``eval_data``. Without ``max_accuracy_drop`` the budget is the pipeline's, else the smallest default of
    its passes (``distill``: 1 point), else none. ``output`` is
    written atomically (never over the input) unless the accuracy budget is missed — then only with
    ``keep_best`` (or a pass whose options set ``keep_best``), and ``passed`` stays False. Raises
    :class:`~graphopt.errors.GraphoptError` subclasses for bad input.

    ``latency_budget``: seconds to time the original and the optimized model interleaved when the
    target is this machine (report ``latency``; ``0`` skips it; ``None``: ``$GRAPHOPT_LATENCY_BUDGET``
    or 2 s). ``engine`` (with ``engine_dir``) ends the run with an engine build of the written model
    (:func:`graphopt.engines.build.build_engine`; report ``engine``); it is checked before any pass runs.
    """
    started = time.perf_counter()
    input_path = Path(model) if isinstance(model, str | os.PathLike) else None
    output_path = Path(output) if output is not None else None
    if output_path is not None:
        check_output_path(output_path, input_path)
    if calib is not None:
        if calib_data is not None:
            raise InputError("give calib or calib_data, not both")
        calib_data = calib
    shortcuts = shortcut_passes(int8, fp16, prune, distill)
    if sum(x is not None for x in (passes, pipeline, shortcuts)) > 1:
        raise InputError("give one of passes, pipeline or the int8=/fp16= shortcuts (prune= included)")
    if pipeline is None:
        from graphopt.passes.simplify import SimplifyPass

        pipeline = Pipeline(passes if passes is not None else shortcuts or [SimplifyPass()], None, None)
    budget = max_accuracy_drop if max_accuracy_drop is not None else pipeline.max_accuracy_drop
    if budget is None:
        defaults = [p.default_max_accuracy_drop for p in pipeline.passes if p.default_max_accuracy_drop is not None]
        budget = min(defaults) if defaults else None
    chosen_metric = metric if metric is not None else pipeline.metric
    if budget is not None and budget < 0:
        raise InputError(f"--max-accuracy-drop must be ≥ 0 percentage points, got {budget}")

    if latency_budget is not None and latency_budget < 0:
        raise InputError(f"latency budget must be ≥ 0 seconds, got {latency_budget}")
    if engine is not None:
        from graphopt.engines.build import check_engine_dir, preflight

        if engine_dir is None or output_path is None:
            raise InputError("an engine build needs an output model path and an engine directory")
        check_engine_dir(Path(engine_dir), input_path)
        preflight(engine)

    loaded = load_model(model)
    source_model = loaded.clone() if not isinstance(model, str | os.PathLike) else loaded
    notes = normalize_model(source_model)
    specs = input_specs(source_model)
    calib = _data(calib_data, "calibration", specs)
    evaluation = _data(eval_data, "evaluation", specs)
    training = _data(train_data, "training", specs)
    check_train_differs(training, evaluation)
    check_metric_choice(chosen_metric, evaluation.labels if evaluation is not None else None)
    resolved = _target(target if target is not None else pipeline.target)

    pass_cache = PassCache(Path(cache_dir) if cache_dir else None, enabled=cache)
    context = PassContext(target=resolved, calib=calib, eval=evaluation, train=training, max_accuracy_drop=budget,
                          metric=chosen_metric, warnings=WarningLog(),
                          cache_dir=pass_cache.root if pass_cache.enabled else None)
    manager = PassManager(pipeline.passes, context, pass_cache)
    result = manager(source_model)

    comparison = result.comparison
    passed = True
    gate = None
    if budget is not None and comparison is not None and evaluation is not None:
        passed = comparison.worst_drop <= budget
        gate = {"max_accuracy_drop": budget, "drop": comparison.worst_drop, "passed": passed}
    elif budget is not None and evaluation is not None:
        gate = {"max_accuracy_drop": budget, "drop": None, "passed": None}
        context.warnings.add("accuracy budget not verified: onnxruntime on this machine cannot run the final "
                             "model; only the passes' own checks (see their rows) vouch for it", condense=False)
    if result.comparison_data is not None and result.comparison_data.synthetic:
        notes.append("outputs compared on generated probe inputs; give --eval-data for real accuracy")

    latency = _latency(context.source or source_model, result.model, resolved, latency_budget, evaluation)
    from graphopt.profiling.speedup import slower_warning  # lazily, as _latency imports the profiler

    slower = slower_warning(latency)

    reference_metrics = None
    if comparison is not None:
        reference_metrics = {m.output: {"kind": m.kind, "value": m.reference_value} for m in comparison.metrics}
    report = Report(
        input_path=str(input_path) if input_path else None,
        output_path=None,
        input_hash=model_hash(loaded),
        output_hash=model_hash(result.model),
        versions=library_versions(),
        target=resolved.to_dict(),
        rows=result.rows,
        metrics_before=reference_metrics,
        metrics_after={**comparison.to_dict(), "summary": comparison.summary()} if comparison else None,
        size_before=initializer_bytes(source_model),
        size_after=initializer_bytes(result.model),
        total_seconds=time.perf_counter() - started,
        notes=notes,
        warnings=[*context.warnings.lines(), *([slower] if slower else [])],
        quality_gate=gate,
        eval_source=result.comparison_data.source if result.comparison_data else None,
        metric=chosen_metric,
        latency=latency,
    )
    # The report is complete before any file is written, so nothing that can fail (hashing a model
    # over protobuf's limit did) comes after an output that a failed run would leave behind.
    keep_best = keep_best or any(getattr(p.options, "keep_best", False) for p in pipeline.passes)
    written = None
    if output_path is not None and (passed or keep_best):
        written = save_model(result.model, output_path, input_path=input_path,
                             external_data=large.has_external_weights(loaded))  # the layout the user gave
        report.output_path = str(written)
        if engine is not None:
            try:
                report.engine = _build_engine(written, Path(engine_dir), engine, evaluation)
            except BaseException:  # the engine is built from the written model: a failed build takes it back
                for path in (written, written.with_name(written.name + ".data")):
                    path.unlink(missing_ok=True)
                raise
        report.total_seconds = time.perf_counter() - started
    return OptimizeResult(result.model, report, written, passed)


def _build_engine(model_path: Path, engine_dir: Path, options, evaluation: DataSet | None) -> dict:
    """Build the engine from the written model; the report's ``engine`` summary."""
    from graphopt.engines.build import build_engine

    manifest = build_engine(model_path, engine_dir, options, data=evaluation)
    runtime = manifest.ort or {}
    return {"dir": str(engine_dir), "engine": manifest.engine, "target": manifest.target.get("kind"),
            "providers": runtime.get("providers") or [f"TensorRT {(manifest.tensorrt or {}).get('version')}"],
            "fallback_reason": runtime.get("fallback_reason"), "precision": manifest.precision}


def _latency(original: ir.Model, optimized: ir.Model, target: Target, budget: float | None,
             evaluation: DataSet | None) -> dict | None:
    """The report's latency rows (:func:`graphopt.profiling.speedup.measure_speedup`), ``None`` when off."""
    from graphopt.profiling.speedup import default_budget, measure_speedup

    budget = default_budget() if budget is None else budget
    if budget == 0:
        return None
    return measure_speedup(original, optimized, target, budget, evaluation)


def shortcut_passes(int8: Int8Options | bool | None, fp16: Fp16Options | bool | None,
                    prune: PruneOptions | float | None = None,
                    distill: DistillOptions | bool | None = None) -> list[GraphoptPass] | None:
    """``[simplify, prune?, distill?, int8?, fp16?]`` for the ``prune=`` (options or an amount),
    ``distill=`` / ``int8=`` / ``fp16=`` (options object or ``True``) shortcuts, ``None`` when none is given."""
    if all(value in (None, False) for value in (int8, fp16, distill)) and prune is None:
        return None
    from graphopt.passes.distill import DistillOptions, DistillPass
    from graphopt.passes.fp16 import Fp16Options, Fp16Pass
    from graphopt.passes.int8 import Int8Options, Int8Pass
    from graphopt.passes.prune import PruneOptions, PrunePass
    from graphopt.passes.simplify import SimplifyPass

    built: list[GraphoptPass] = [SimplifyPass()]
    if prune is not None:
        if isinstance(prune, bool) or not isinstance(prune, PruneOptions | int | float):
            raise InputError(f"prune= takes PruneOptions(...) or an amount, got {type(prune).__name__}")
        built.append(PrunePass(prune if isinstance(prune, PruneOptions) else PruneOptions(amount=float(prune))))
    for value, pass_type, options_type, name in ((distill, DistillPass, DistillOptions, "distill"),
                                                 (int8, Int8Pass, Int8Options, "int8"),
                                                 (fp16, Fp16Pass, Fp16Options, "fp16")):
        if value in (None, False):
            continue
        if value is not True and not isinstance(value, options_type):
            raise InputError(f"{name}= takes {options_type.__name__}(...) or True, got {type(value).__name__}")
        built.append(pass_type(None if value is True else value))
    return built


def _data(data: DataLike | None, role: str, specs) -> DataSet | None:
    if data is None:
        return None
    dataset = data if isinstance(data, DataSet) else load_data(data)
    return dataset.check_against(specs, role)


def check_train_differs(train: DataSet | None, evaluation: DataSet | None) -> None:
    """Refuse training data identical to the evaluation data: a substitution justified on the data it was
    trained on proves nothing."""
    if train is None or evaluation is None:
        return
    if train.inputs.keys() == evaluation.inputs.keys() and all(
            np.array_equal(train.inputs[k], evaluation.inputs[k]) for k in train.inputs):
        raise InputError(f"training data {train.source} is the evaluation data {evaluation.source}; "
                         "give a held-out evaluation set")


def _target(target: str | Target | None) -> Target:
    if isinstance(target, Target):
        return target
    return make_target(target)
