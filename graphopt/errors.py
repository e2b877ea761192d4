"""Errors that carry their exit code, so the CLI can map them without guessing.

Exit codes: 0 success, 1 a quality gate failed, 2 bad input or usage, 130 interrupted.
"""

from __future__ import annotations

from onnx_ir.passes import PreconditionError


class GraphoptError(Exception):
    """Base class: a problem the user can act on, reported as one line."""

    exit_code = 2


class InputError(GraphoptError):
    """Bad input: missing/corrupt model, mismatched data, impossible options (exit 2)."""

    exit_code = 2


class PreconditionFailed(InputError, PreconditionError):
    """A pass cannot run on this model (e.g. already quantized).

    Also an ``onnx_ir`` ``PreconditionError``, so ``onnx_ir``'s pass infrastructure re-raises it
    unchanged instead of wrapping it."""


class PassFailedError(GraphoptError):
    """A pass crashed or produced a model that does not validate (exit 1)."""

    exit_code = 1


class QualityGateError(GraphoptError):
    """The optimized model misses an accuracy budget or a check (exit 1)."""

    exit_code = 1


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else text)[:300]
