"""``distill``: train a smaller student on the teacher's outputs and substitute it when it is good enough.

Steps:
1. find the teacher and the student (:mod:`.student`): a user file, the teacher channel-pruned to
   ``student_width``, or — with neither — the model an earlier pass (``prune``) made smaller, the
   pipeline's input being the teacher; check the student takes and returns what the teacher does;
2. run the teacher once with onnxruntime on the training data (streamed to disk and cached:
   :mod:`.teacher_outputs`) and on the evaluation data;
3. choose a loss per output (:mod:`.loss`: ``kd`` for class logits, ``cosine`` / ``mse`` otherwise) and
   train the student with torch (:mod:`.train`), keeping the best epoch on the evaluation metric;
4. export the student back to ONNX and verify it against the torch module (:mod:`.export`);
5. **substitution decision**: onnxruntime scores the exported student against the teacher on the
   evaluation data with the manager's metric; the student replaces the model only if its quality drop
   is within ``max_accuracy_drop`` (default :data:`DEFAULT_BUDGET` points when distilling). Otherwise
   the pass changes nothing (``unchanged``; it never undoes an earlier pass), the report shows both
   scores and a warning says why — the run's exit code then follows the usual gate on the final model.

Later passes (``int8``, ``fp16``) work on whichever model won, so distill runs before them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import time
from typing import Any, Literal

import onnx_ir as ir

from graphopt.console import stderr
from graphopt.data import input_specs, leading_dims
from graphopt.errors import InputError, PreconditionFailed
from graphopt.model_io import model_hash
from graphopt.pass_base import GraphoptPass, GraphoptPassResult
from graphopt.verify import compare_outputs

LossChoice = Literal["auto", "kd", "mse", "cosine"]
LOSS_CHOICES: tuple[str, ...] = ("auto", "kd", "mse", "cosine")
"""Per-output distillation losses (:mod:`graphopt.passes.distill.loss`); this module imports no torch."""

DEFAULT_BUDGET = 1.0
"""Largest quality drop (points) a student may show when the user sets no ``--max-accuracy-drop``."""

EXTRA_HINT = "pip install 'graphopt[distill]' (PyTorch)"


@dataclasses.dataclass(frozen=True)
class DistillOptions:
    student: str | None = None
    """Path of a student ONNX model (same inputs/outputs as the teacher)."""
    student_width: float | None = None
    """Derive the student by channel-pruning the teacher to this width, in (0, 1)."""
    loss: LossChoice = "auto"
    """``auto`` | ``kd`` | ``mse`` | ``cosine`` (see :mod:`graphopt.passes.distill.loss`)."""
    temperature: float = 3.0
    """Softmax temperature T of the kd loss."""
    alpha: float = 0.7
    """Weight α of the soft (teacher) term of the kd loss; 1 when there are no labels."""
    epochs: int = 30
    batch_size: int = 64
    lr: float | None = None
    """Peak learning rate; ``None``: 1e-3, or 1e-4 for transformer students (:func:`.train.default_lr`)."""
    weight_decay: float = 1e-4
    patience: int = 8
    """Stop after this many epochs without a better evaluation score."""
    seed: int = 0
    device: Literal["cpu", "cuda"] = "cpu"
    threads: int | None = None
    """torch threads while training; ``None``: 1 for small students, else torch's default (:mod:`.train`)."""
    keep_sparsity: bool = True
    """Weights that are exactly zero in the student stay zero (prune-then-distill keeps its sparsity)."""

    def __post_init__(self) -> None:
        if self.student is not None and self.student_width is not None:
            raise InputError("distill: give a student model or a student width, not both")
        if self.student_width is not None and not 0 < self.student_width < 1:
            raise InputError(f"distill: student width must be in (0, 1), got {self.student_width}")
        if self.temperature <= 0:
            raise InputError(f"distill: temperature must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise InputError(f"distill: alpha must be in [0, 1], got {self.alpha}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"distill: threads must be ≥ 1, got {self.threads}")
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise InputError(f"distill: {name.replace('_', '-')} must be ≥ 1, got {getattr(self, name)}")
        if self.lr is not None and self.lr <= 0:
            raise InputError(f"distill: learning rate must be > 0, got {self.lr}")


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


class DistillPass(GraphoptPass):
    """Knowledge distillation into a smaller student, substituted only within the accuracy budget."""

    name = "distill"
    Options = DistillOptions
    needs = frozenset({"train", "eval"})
    refuses_after = frozenset({"int8", "fp16"})
    min_opset = 13
    default_max_accuracy_drop = DEFAULT_BUDGET

    def __init__(self, options: DistillOptions | None = None) -> None:
        super().__init__(options)
        self._user_student: ir.Model | None = None

    def fingerprint(self) -> dict[str, Any]:
        """Options plus what they point at: the student file's content, the teacher when it is the
        pipeline's input (the cache key must change when either does)."""
        found = super().fingerprint()
        if self.options.student is not None:
            found["student_hash"] = model_hash(self._load_user_student())
        elif self.options.student_width is None and self.context.source is not None:
            found["teacher_hash"] = model_hash(self.context.source)
        return found

    def requires(self, model: ir.Model) -> None:
        if not torch_available():
            raise PreconditionFailed(f"distill needs PyTorch: {EXTRA_HINT}")

    def call(self, model: ir.Model) -> GraphoptPassResult:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch's first import: see .train
        from graphopt.passes.distill.export import export_student
        from graphopt.passes.distill.loss import choose_losses, label_output
        from graphopt.passes.distill.student import check_student_io, weight_counts
        from graphopt.passes.distill.teacher_outputs import run_teacher, teacher_outputs
        from graphopt.passes.distill.torch_graph import TorchGraph
        from graphopt.passes.distill.train import TrainConfig, default_lr, default_threads, train_student

        options, context = self.options, self.context
        train_data, eval_data = context.train, context.eval
        if train_data is None or eval_data is None:
            raise InputError("distill needs training and evaluation data: give --train-data and --eval-data")
        teacher, student, notes, source = self._teacher_and_student(model)
        check_student_io(teacher, student)
        train_data = train_data.check_against(input_specs(teacher), "training")
        if train_data.stacked:
            raise PreconditionFailed(f"distill trains on batches of samples, but the model's inputs share no batch "
                                     f"axis (leading dims {leading_dims(input_specs(teacher))})")

        budget = context.max_accuracy_drop if context.max_accuracy_drop is not None else DEFAULT_BUDGET
        teacher_eval = run_teacher(teacher, eval_data)
        losses = choose_losses(options.loss, teacher_eval, eval_data.labels, context.metric)
        labelled = label_output(losses, teacher_eval) if train_data.labels is not None else None
        module = TorchGraph(student)
        lr = options.lr if options.lr is not None else default_lr({n.op_type for n in student.graph})
        threads = options.threads or default_threads(weight_counts(student)[0])
        config = TrainConfig(options.epochs, options.batch_size, lr, options.weight_decay, options.patience,
                             options.seed, options.device, threads, options.temperature, options.alpha,
                             options.keep_sparsity)
        cache_root = context.cache_dir
        batch = train_data.batch_size_for(input_specs(student), preferred=options.batch_size)
        with teacher_outputs(teacher, train_data, cache_root) as (teacher_train, from_cache):
            outcome = train_student(module, train_data, teacher_train, eval_data, teacher_eval, losses, labelled,
                                    config, context.metric, batch_size=batch)
        exported, export_error = export_student(module, student, eval_data, options.device)

        scored = run_teacher(exported, eval_data)
        comparison = compare_outputs(teacher_eval, scored, eval_data.labels, context.metric)
        substituted = comparison.worst_drop <= budget
        teacher_weights, student_weights = weight_counts(teacher)[1], weight_counts(exported)[1]
        stats: dict[str, Any] = {
            "student_from": source,
            "losses": ", ".join(f"{k}={v}" for k, v in losses.items()),
            "labels": "used" if labelled else "none (alpha = 1)" if "kd" in losses.values() else "not used",
            "lr": lr,
            "threads": threads,
            "epochs_run": outcome.history[-1].epoch,
            "best_epoch": outcome.best.epoch,
            "train_seconds": round(outcome.seconds, 1),
            "teacher_outputs_cached": from_cache,
            "teacher_weights": teacher_weights,
            "student_weights": student_weights,
            "weight_ratio": round(student_weights / max(teacher_weights, 1), 3),
            "teacher": _metric_text(comparison, reference=True),
            "student": _metric_text(comparison, reference=False),
            "drop_before_training": round(outcome.initial.drop, 3),
            "drop": round(comparison.worst_drop, 3),
            "budget": budget,
            "export_max_rel_error": float(f"{export_error:.3g}"),
            "substituted": substituted,
        }
        if not substituted:
            message = (f"distill: student not substituted — quality drop {comparison.worst_drop:.2f} points > "
                       f"budget {budget:g} ({_metric_text(comparison, reference=False)} vs teacher "
                       f"{_metric_text(comparison, reference=True)}); the model is kept as it was")
            context.warnings.add(message, condense=False)
            stderr.print(f"[yellow]warning:[/yellow] {message}")
            return self.result(model.clone(), False, stats, notes)
        notes.append(f"student substituted: drop {comparison.worst_drop:.2f} ≤ {budget:g} points, "
                     f"{student_weights / max(teacher_weights, 1):.2f}× the teacher's weights")
        return self.result(exported, True, stats, notes)

    def _teacher_and_student(self, model: ir.Model) -> tuple[ir.Model, ir.Model, list[str], str]:
        """(teacher, student, notes, how the student was made) — see :mod:`.student`."""
        from graphopt.passes.distill.student import prune_to_width

        options, source = self.options, self.context.source
        if (options.student is not None or options.student_width is not None) and source is not None \
                and not self._computes_the_same(source, model):
            raise InputError("an earlier pass (e.g. prune) already changed the model, which makes it the student: "
                             "drop --student/--student-width, or run distill without that pass")
        if options.student is not None:
            return model, self._load_user_student(), [], f"file {options.student}"
        if options.student_width is not None:
            started = time.perf_counter()
            student, notes = prune_to_width(model, options.student_width)
            notes.append(f"auto-student built in {time.perf_counter() - started:.1f}s")
            return model, student, notes, f"teacher channel-pruned to width {options.student_width:g}"
        if source is None or self._computes_the_same(source, model):
            raise InputError("distill needs a student: give --student PATH or --student-width W, or run a pruning "
                             "pass before distill (the pruned model is then the student)")
        return source, model, ["teacher: the pipeline's input model; student: the model earlier passes made"], \
            "the model earlier passes made"

    def _computes_the_same(self, source: ir.Model, model: ir.Model) -> bool:
        """True when earlier passes left the model's outputs on the evaluation data as they were (they were
        lossless, e.g. ``simplify``): then there is no student to train."""
        from graphopt.manager import LOSSLESS_RTOL
        from graphopt.passes.distill.teacher_outputs import run_teacher

        data = self.context.eval
        reference = run_teacher(source, data)
        return compare_outputs(reference, run_teacher(model, data), data.labels).numerically_close(LOSSLESS_RTOL)

    def _load_user_student(self) -> ir.Model:
        from graphopt.passes.distill.student import load_student

        if self._user_student is None:
            self._user_student = load_student(self.options.student)
        return self._user_student.clone()


def _metric_text(comparison, *, reference: bool) -> str:
    parts = []
    for m in comparison.metrics:
        value = m.reference_value if reference else m.value
        if m.kind == "accuracy":
            parts.append(f"{m.output}: acc {100 * value:.2f}%")
        elif m.kind == "cosine":
            parts.append(f"{m.output}: cos {value:.4f}")
        else:
            parts.append(f"{m.output}: {m.kind} {100 * value:.2f}%")
    return "; ".join(parts)
