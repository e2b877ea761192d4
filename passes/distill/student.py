"""Where the student comes from, and the check that it can stand in for the teacher.

Three sources, decided by the options and by what the pass receives:

* ``student="path.onnx"`` — a user model; the teacher is the model the pass receives (refused when an
  earlier pass changed what that model computes: it would then be the student, see the last case);
* ``student_width=W`` — the teacher channel-pruned to width ``W`` (``amount = 1 − W``) by
  :func:`graphopt.passes.prune.channel.prune_channels`, surviving weights kept as the initialization
  (prune-then-distill);
* neither — the model the pass receives *is* the student (an earlier pass, e.g. ``prune``, made it
  smaller) and the teacher is the pipeline's input model. Refused when the received model still
  computes what the input does (earlier passes were lossless): there is nothing to distil into.

A student must accept and return exactly what the teacher does: the same input and output names,
element types and ranks; static dims equal; a dim that is dynamic in the teacher's inputs dynamic in
the student's too (it must take the same batch sizes and sequence lengths).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.model_io import load_model, normalize_model, opset_version, upgrade_opset

MIN_OPSET = 13


def load_student(path: str | Path) -> ir.Model:
    """Read a student ONNX file (one-line errors), in the form the passes expect (opset ≥ 13)."""
    path = Path(path)
    model = load_model(path)
    normalize_model(model)
    if opset_version(model) < MIN_OPSET:
        model = upgrade_opset(model)
    return model


def prune_to_width(teacher: ir.Model, width: float) -> tuple[ir.Model, list[str]]:
    """The teacher channel-pruned to ``width`` (surviving weights kept) and notes on what was left alone."""
    from graphopt.passes.prune.channel import prune_channels

    outcome = prune_channels(teacher, 1.0 - width)
    widths = ", ".join(f"{g.channels_before}→{g.channels_after}" for g in outcome.groups[:8])
    notes = [f"auto-student: {len(outcome.groups)} channel group(s) pruned ({widths}"
             f"{' …' if len(outcome.groups) > 8 else ''})"]
    skipped = [f"{', '.join(s.members[:2]) or '?'}: {s.reason}" for s in outcome.skipped]
    if skipped:
        notes.append(f"auto-student: {len(skipped)} dim(s) kept at full width ("
                     + "; ".join(skipped[:3]) + (" …" if len(skipped) > 3 else "") + ")")
    if not outcome.groups:
        raise InputError(f"--student-width {width:g}: no channels of the teacher could be pruned "
                         f"({'; '.join(skipped[:3]) or 'no prunable layers'}); give --student PATH")
    return outcome.model, notes


def _dims(value: ir.Value) -> tuple[int | None, ...] | None:
    if value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in value.shape)


def _describe(dims: tuple[int | None, ...] | None) -> str:
    return "?" if dims is None else "(" + ", ".join("?" if d is None else str(d) for d in dims) + ")"


def check_student_io(teacher: ir.Model, student: ir.Model) -> None:
    """Raise :class:`InputError` naming the first input/output the student does not share with the teacher."""
    for role, t_values, s_values in (("input", _inputs(teacher), _inputs(student)),
                                     ("output", list(teacher.graph.outputs), list(student.graph.outputs))):
        t_names, s_names = [v.name for v in t_values], [v.name for v in s_values]
        if sorted(t_names) != sorted(s_names):
            missing, extra = sorted(set(t_names) - set(s_names)), sorted(set(s_names) - set(t_names))
            parts = ([f"lacks {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"has extra {', '.join(map(repr, extra))}"] if extra else [])
            raise InputError(f"student {role}s do not match the teacher's: the student {' and '.join(parts)} "
                             f"(teacher {role}s: {', '.join(t_names)})")
        by_name = {v.name: v for v in s_values}
        for t in t_values:
            s = by_name[t.name]
            if t.dtype != s.dtype:
                raise InputError(f"student {role} '{t.name}' is {_dtype(s)} but the teacher's is {_dtype(t)}")
            t_dims, s_dims = _dims(t), _dims(s)
            if t_dims is None or s_dims is None:
                continue
            if len(t_dims) != len(s_dims) or any(
                    (a is not None and b is not None and a != b) or (role == "input" and a is None and b is not None)
                    for a, b in zip(t_dims, s_dims)):
                raise InputError(f"student {role} '{t.name}' has shape {_describe(s_dims)} but the teacher's is "
                                 f"{_describe(t_dims)}")


def _inputs(model: ir.Model) -> list[ir.Value]:
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _dtype(value: ir.Value) -> str:
    return value.dtype.name.lower() if value.dtype is not None else "untyped"


def weight_counts(model: ir.Model) -> tuple[int, int]:
    """(float weights, non-zero float weights) over initializers with two or more elements."""
    total = nonzero = 0
    for value in model.graph.initializers.values():
        if value.const_value is None or not value.const_value.dtype.is_floating_point():
            continue
        array = value.const_value.numpy()
        if array.size >= 2:
            total += array.size
            nonzero += int(np.count_nonzero(array))
    return total, nonzero
