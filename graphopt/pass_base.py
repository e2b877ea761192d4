"""The graphopt pass contract, built on ``onnx_ir.passes``.

A graphopt pass is an ``onnx_ir`` :class:`~onnx_ir.passes.FunctionalPass` (it returns a new model
and leaves its input alone, so the manager can roll it back) with:

* ``name`` — kebab-case; the CLI flag, the pipeline-file key and the report key;
* ``Options`` — a frozen dataclass; its fields are the pass's whole configuration and give the
  cache fingerprint;
* ``needs`` — data it cannot run without (``"calib"``, ``"eval"``, ``"train"``), checked before any work starts;
* ``refuses_after`` — names of passes that must not run before it (e.g. prune after int8);
* ``lossless`` — when True the manager requires the outputs to match the reference numerically
  and rolls the pass back otherwise;
* ``min_opset`` — the manager upgrades older models (with a report note) before calling it
  (:mod:`graphopt.opset_upgrade`);
* ``lowest_opset`` — the oldest opset the pass can run at when that upgrade fails (``None``: it cannot;
  ``own_opset_note`` says what it gives up there);
* ``default_max_accuracy_drop`` — the accuracy budget of a run that includes the pass when the user
  sets none (``distill``: 1 point, since a substitution must be justified by a measurement);
* ``requires(model)`` — preconditions, raising :class:`PreconditionFailed` with a message a
  user understands;
* ``call(model)`` returns a :class:`GraphoptPassResult` with ``stats`` (what changed) and ``notes``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import onnx_ir as ir
from onnx_ir.passes import FunctionalPass, PassResult

from graphopt.console import WarningLog
from graphopt.data import DataSet
from graphopt.target import Target
from graphopt.verify import MetricChoice


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """For passes without options."""


@dataclasses.dataclass
class PassContext:
    """What a pass may read besides the model: target, data, budget, warning log."""

    target: Target
    calib: DataSet | None = None
    eval: DataSet | None = None
    train: DataSet | None = None
    """Training data (passes that learn, e.g. ``distill``); must differ from ``eval``."""
    max_accuracy_drop: float | None = None
    """Largest allowed quality drop, in percentage points (see :mod:`graphopt.verify`)."""
    metric: MetricChoice = "auto"
    """How outputs are judged against the original (:mod:`graphopt.verify`)."""
    warnings: WarningLog = dataclasses.field(default_factory=WarningLog)
    cache_dir: Any = None
    """Folder for a pass's own on-disk caches (``None`` with ``--no-cache``)."""
    source: ir.Model | None = None
    """The pipeline's input model (set by the manager): the teacher of a ``distill`` after ``prune``."""


@dataclasses.dataclass
class GraphoptPassResult(PassResult):
    """``PassResult`` plus what the pass did, for the report."""

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)


class GraphoptPass(FunctionalPass):
    """Base class of every graphopt pass (see the module docstring for the contract)."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    needs: ClassVar[frozenset[str]] = frozenset()
    refuses_after: ClassVar[frozenset[str]] = frozenset()
    lossless: ClassVar[bool] = False
    min_opset: ClassVar[int | None] = None
    lowest_opset: ClassVar[int | None] = None
    own_opset_note: ClassVar[str] = ""
    default_max_accuracy_drop: ClassVar[float | None] = None
    uses_data: ClassVar[frozenset[str]] = frozenset()
    """Data the result depends on (part of the cache key): ``"calib"``, ``"eval"``, ``"train"``."""
    gate_hint: ClassVar[str | None] = None
    """Added to the message when the accuracy budget is missed (what to do about it)."""

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{type(self).__name__} takes {self.Options.__name__}, got {type(self.options).__name__}")
        self._context: PassContext | None = None

    @property
    def context(self) -> PassContext:
        if self._context is None:
            self._context = PassContext(target=Target("cpu"))
        return self._context

    def bind(self, context: PassContext) -> GraphoptPass:
        self._context = context
        return self

    def fingerprint(self) -> dict[str, Any]:
        """Stable description of this pass and its options (cache key, report)."""
        return {"name": self.name, "options": dataclasses.asdict(self.options)}

    def result(self, model: ir.Model, modified: bool, stats: dict | None = None,
               notes: list[str] | None = None) -> GraphoptPassResult:
        return GraphoptPassResult(model, modified, stats or {}, notes or [])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.options == other.options  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self), self.options))
