"""The PassManager: runs graphopt passes in order and proves each result.

After every pass it
1. validates the model (onnx checker, shape inference, onnxruntime loads it);
2. compares outputs with the reference (original) model on the evaluation data, or on generated
   probe inputs when none were given (see :mod:`graphopt.verify` for the metrics);
3. rolls back a ``lossless`` pass whose outputs differ or whose model does not validate;
   (before a pass that needs a newer opset the model is upgraded, and a model onnxruntime cannot run at
   its own opset is upgraded once before the first pass: :mod:`graphopt.opset_upgrade`; every result
   gets the IR version its contents need);
4. records a report row, and caches the result by content hash.

Impossible orders (a pass listed after one it ``refuses_after``) and missing data are refused at
construction, before any work starts.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import FunctionalPass

from graphopt import large
from graphopt.cache import PassCache
from graphopt.console import captured_warnings
from graphopt.data import DataSet, input_specs, probe_data
from graphopt.engines import ort as ort_engine
from graphopt.errors import GraphoptError, InputError, PassFailedError, first_line
from graphopt.model_io import initializer_bytes, model_hash
from graphopt.opset_upgrade import prepare_for_pass, runnable, settle_ir_version
from graphopt.pass_base import GraphoptPass, GraphoptPassResult, PassContext
from graphopt.report import PassRow
from graphopt.validate import validate_model
from graphopt.verify import Comparison, compare_outputs

LOSSLESS_RTOL = 1e-3
"""A lossless pass may move each output by at most this fraction of the output's largest magnitude."""

NEED_FLAGS = {"calib": "--calib-data", "eval": "--eval-data", "train": "--train-data"}


@dataclasses.dataclass
class ManagerResult(GraphoptPassResult):
    rows: list[PassRow] = dataclasses.field(default_factory=list)
    reference: dict[str, np.ndarray] | None = None
    comparison: Comparison | None = None
    comparison_data: DataSet | None = None


def check_order(passes: Sequence[GraphoptPass]) -> None:
    """Refuse duplicates and passes listed after one they must not follow."""
    seen: list[str] = []
    for p in passes:
        if p.name in seen:
            raise InputError(f"pass '{p.name}' is listed twice in the pipeline")
        clash = [name for name in seen if name in p.refuses_after]
        if clash:
            raise InputError(f"pass '{p.name}' cannot run after '{clash[0]}'; put '{p.name}' first")
        seen.append(p.name)


def check_needs(passes: Sequence[GraphoptPass], context: PassContext) -> None:
    for p in passes:
        for need in sorted(p.needs):
            if getattr(context, need, None) is None:
                raise InputError(f"pass '{p.name}' needs {need} data: give {NEED_FLAGS.get(need, need)} PATH")


class PassManager(FunctionalPass):
    """Runs graphopt passes with validation, comparison, rollback, caching and report rows."""

    def __init__(self, passes: Sequence[GraphoptPass], context: PassContext, cache: PassCache | None = None) -> None:
        check_order(passes)
        check_needs(passes, context)
        self.passes = list(passes)
        self.context = context
        self.cache = cache or PassCache(enabled=False)
        for p in self.passes:
            p.bind(context)

    def comparison_data(self, model: ir.Model) -> DataSet:
        """The evaluation data, else deterministic probe inputs."""
        if self.context.eval is not None:
            return self.context.eval
        return probe_data(input_specs(model))

    def call(self, model: ir.Model) -> ManagerResult:
        """Every pass in order (module docstring); a model that keeps its weights out of protos
        (:mod:`graphopt.large`) runs inside one weight scope, so each pass sees them where they lie."""
        with large.scope_for(model):
            return self._call(model)

    def _call(self, model: ir.Model) -> ManagerResult:
        data = self.comparison_data(model)
        batch = data.batch_size_for(input_specs(model))
        first_notes: list[str] = []
        try:
            reference = _run(model, data, batch)
            if reference is None:  # no kernel at the model's opset: the upgraded model may have one
                upgraded = runnable(model)
                if upgraded is not None:
                    model, first_notes = upgraded.model, upgraded.notes
                    reference = _run(model, data, batch)
        except Exception as exc:
            shapes = ", ".join(f"{k} {'x'.join(map(str, v.shape))}" for k, v in data.inputs.items())
            fix = "give --eval-data with real inputs" if data.synthetic else "check the evaluation data"
            raise InputError(f"the input model fails on {data.source} ({shapes}): {first_line(exc)}; {fix}") from exc
        self.context.source = model
        labels = data.labels
        working = model
        rows: list[PassRow] = []
        metric = self.context.metric
        comparison = compare_outputs(reference, reference, labels, metric) if reference is not None else None
        for p in self.passes:
            row = PassRow(p.name, "applied", nodes_before=len(working.graph), bytes_before=initializer_bytes(working))
            row.notes, first_notes = first_notes, []
            started = time.perf_counter()
            prepared = prepare_for_pass(working, p)
            working = prepared.model
            row.notes += prepared.notes
            result, row.cache_hit = self._run_pass(p, working)
            row.stats, row.notes = dict(result.stats), row.notes + list(result.notes)
            candidate = large.resolve(result.model) if large.active_store() is not None else result.model
            raised = settle_ir_version(candidate)
            if raised:
                row.notes.append(raised)
            check = validate_model(candidate, require_runtime=self.context.target.kind == "cpu", source=working)
            rolled_back_reason = None
            if not check.ok:
                if not p.lossless:
                    raise PassFailedError(f"pass '{p.name}' produced an invalid model: {check.problem}")
                rolled_back_reason = f"result did not validate ({check.problem})"
            elif check.note:
                row.notes.append(check.note)
            new_comparison = None  # stays None when the candidate cannot run here: nothing is claimed
            outputs = None
            if rolled_back_reason is None and reference is not None and check.engine is not None:
                outputs = _run_engine(check.engine, data, batch)
            if outputs is not None:
                new_comparison = compare_outputs(reference, outputs, labels, metric)
                if p.lossless and not new_comparison.numerically_close(LOSSLESS_RTOL):
                    worst = max(new_comparison.metrics, key=lambda m: m.relative_error)
                    rolled_back_reason = (f"outputs differ from the original on {data.source} "
                                          f"('{worst.output}': max |Δ| {worst.max_abs_error:.3g})")
            if rolled_back_reason:
                row.status, row.stats = "rolled back", {}
                row.notes.append(rolled_back_reason)
            else:
                working, comparison = candidate, new_comparison
                row.status = "applied" if result.modified else "unchanged"
            row.seconds = time.perf_counter() - started
            row.nodes_after, row.bytes_after = len(working.graph), initializer_bytes(working)
            if comparison is not None:
                row.metric, row.metric_summary = comparison.to_dict(), comparison.summary()
            elif reference is not None:
                row.metric_summary = "not measured: cannot run on this machine"
            rows.append(row)
            check = outputs = None  # the session maps the model's weights: release it before the next pass
        modified = any(r.status == "applied" for r in rows)
        return ManagerResult(working if working is not model else model.clone(), modified, rows=rows,
                             reference=reference, comparison=comparison, comparison_data=data)

    def _run_pass(self, p: GraphoptPass, model: ir.Model) -> tuple[GraphoptPassResult, bool]:
        extra = {"target": self.context.target.kind}
        for need in sorted(p.uses_data | p.needs):
            dataset = getattr(self.context, need, None)
            extra[need] = dataset.fingerprint() if dataset is not None else None
        if p.uses_data or p.needs:
            extra["max_accuracy_drop"] = self.context.max_accuracy_drop
            extra["metric"] = self.context.metric
        key = self.cache.key(model_hash(model), p.fingerprint(), extra) if self.cache.enabled else ""
        cached = self.cache.get(key) if key else None
        if cached is not None:
            cached_model, meta = cached
            return GraphoptPassResult(cached_model, meta.get("modified", True), meta.get("stats", {}),
                                      meta.get("notes", [])), True
        try:
            with captured_warnings(self.context.warnings):
                result = p(model)
        except GraphoptError:
            raise
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise PassFailedError(f"pass '{p.name}' failed: {type(exc).__name__}: {first}") from exc
        if not isinstance(result, GraphoptPassResult):
            result = GraphoptPassResult(result.model, result.modified)
        if key:
            note = self.cache.put(key, result.model, {"modified": result.modified, "stats": result.stats,
                                                      "notes": result.notes})
            if note:
                result.notes = [*result.notes, note]
        return result, False


def _run(model: ir.Model, data: DataSet, batch: int) -> dict[str, np.ndarray] | None:
    """Outputs of ``model`` on ``data`` with onnxruntime (CPU), or ``None`` if it cannot run here."""
    try:
        engine = ort_engine.build(model)
    except Exception:
        return None
    return _run_engine(engine, data, batch)


def _run_engine(engine: ort_engine.OrtEngine, data: DataSet, batch: int) -> dict[str, np.ndarray]:
    """Outputs of ``engine`` on ``data``, batch by batch."""
    # float data for a model with fp16/double inputs (e.g. fp16 with --fp16-io): cast the feeds
    float_inputs = {i.name: _NP_FLOAT[i.type] for i in engine.session.get_inputs() if i.type in _NP_FLOAT}
    batches = ({k: v.astype(float_inputs[k]) if k in float_inputs and v.dtype.kind == "f" else v
                for k, v in feeds.items()} for feeds in data.batches(batch))
    return engine.run_batches(batches, data.join)


_NP_FLOAT = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}
