"""Model validation after every pass: onnx checker, strict shape inference, onnxruntime loads it."""

from __future__ import annotations

import dataclasses
import re

import onnx
import onnx_ir as ir

from graphopt import large
from graphopt.engines import ort as ort_engine
from graphopt.errors import first_line
from graphopt.model_io import custom_domains


@dataclasses.dataclass
class ValidationResult:
    ok: bool
    problem: str | None = None
    runnable: bool = True
    """False when onnxruntime on this machine cannot load the model (custom ops, GPU-only kernels)."""
    note: str | None = None
    engine: ort_engine.OrtEngine | None = None
    """The CPU session that proved the model loads, for callers that run it next."""


def validate_model(model: ir.Model, *, require_runtime: bool = True,
                   source: ir.Model | None = None) -> ValidationResult:
    """Check ``model``; ``require_runtime=False`` turns a session creation that fails for want of a kernel
    (not for a malformed model) into a note. With ``source`` (the model a pass was given), a checker or
    shape-inference problem that ``source`` has too becomes a note: a pass is not failed for what it was
    handed (onnx cannot infer some function bodies of its own ops, MeanVarianceNormalization's for one).

    Custom-domain ops that onnxruntime does not know never fail validation: the note says the
    numerics could not be checked. A model with detached weights (:mod:`graphopt.large`) is checked
    as its skeleton, and its session reads the weights where they lie.
    """
    with large.scope_for(model):
        proto = large.to_proto(model)
        problem = static_problem(proto, model)
        inherited = None
        if problem is not None and source is not None:
            with large.scope_for(source):
                before = static_problem(large.to_proto(source), source)
            if before is not None and _shape(before) == _shape(problem):
                inherited, problem = f"{problem} (the pass's input has the same problem)", None
        if problem is not None:
            return ValidationResult(False, problem)
        result = _validate(proto, model, require_runtime)
        if inherited and result.ok:
            result.note = "; ".join(n for n in (inherited, result.note) if n)
        return result


def static_problem(proto: onnx.ModelProto, model: ir.Model) -> str | None:
    """What onnx's checker or strict shape inference finds wrong with the model, or ``None``."""
    try:
        large.check_model(proto)
    except Exception as exc:
        return f"onnx checker: {first_line(exc)}"
    try:
        onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=not custom_domains(model),
                                          data_prop=True)
    except Exception as exc:
        return f"shape inference: {first_line(exc)}"
    return None


def _shape(problem: str) -> str:
    """A problem without the node names in it (a pass renames nodes)."""
    return re.sub(r", node name: [^)]*", "", problem)


def _validate(proto: onnx.ModelProto, model: ir.Model, require_runtime: bool) -> ValidationResult:
    unknown = custom_domains(model)
    try:
        engine = ort_engine.build(proto)
    except Exception as exc:
        reason = first_line(exc)
        if unknown:
            return ValidationResult(True, None, False, f"onnxruntime cannot run custom op domain(s) {', '.join(sorted(unknown))}; outputs not compared")
        if not require_runtime and _missing_kernel(exc):
            return ValidationResult(True, None, False, f"onnxruntime (CPU) cannot load the model here: {reason}")
        return ValidationResult(False, f"onnxruntime cannot load the model: {reason}")
    return ValidationResult(True, engine=engine)


def _missing_kernel(exc: Exception) -> bool:
    """True when onnxruntime refused a model only for want of a kernel on this machine (a GPU target's
    fp16 op, a GPU-only op), not because the model itself is malformed."""
    text = str(exc)
    return "NOT_IMPLEMENTED" in text or "Could not find an implementation" in text or "NotImplemented" in type(exc).__name__

