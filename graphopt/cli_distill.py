"""CLI flags of the ``distill`` pass (a smaller student trained on the teacher's outputs)."""

from __future__ import annotations

from pathlib import Path

import click

LOSS_CHOICES = ("auto", "kd", "mse", "cosine")
"""Same as graphopt.passes.distill.substitute.LOSS_CHOICES (not imported: keeps --help fast)."""

OPTIONS = [
    click.option("--distill", is_flag=True,
                 help="Train a smaller student on the teacher's outputs (--train-data) and substitute it when it "
                      "stays within --max-accuracy-drop [default 1 point when distilling] on --eval-data."),
    click.option("--student", type=click.Path(path_type=Path), metavar="PATH",
                 help="Student ONNX model (same inputs/outputs as the teacher)."),
    click.option("--student-width", type=click.FloatRange(0, 1, min_open=True, max_open=True), metavar="W",
                 help="Student = the teacher channel-pruned to width W (e.g. 0.5), surviving weights kept."),
    click.option("--distill-loss", type=click.Choice(LOSS_CHOICES), default="auto", show_default=True,
                 help="kd (soft labels, T=3, alpha=0.7), mse or cosine; auto picks per output and reports it."),
    click.option("--epochs", type=click.IntRange(min=1), help="Distillation epochs [default: 30, early stop]."),
    click.option("--batch-size", type=click.IntRange(min=1), help="Distillation batch size [default: 64]."),
    click.option("--lr", type=click.FloatRange(min=0, min_open=True),
                 help="Peak learning rate [default: 1e-3; 1e-4 for transformer students]."),
    click.option("--seed", type=int, help="Seed of the training order and initialization [default: 0]."),
    click.option("--device", type=click.Choice(["cpu", "cuda"]), help="Where torch trains [default: cpu]."),
]

_DISTILL_ONLY = ("student", "student_width", "epochs", "batch_size", "lr", "seed", "device")


def build_pass(params: dict):
    """``DistillPass`` when ``--distill`` is given; the distill-only flags without it are a usage error."""
    from graphopt.errors import InputError

    if not params.get("distill"):
        given = [f"--{name.replace('_', '-')}" for name in _DISTILL_ONLY if params.get(name) is not None]
        if params.get("distill_loss", "auto") != "auto":
            given.append("--distill-loss")
        if given:
            raise InputError(f"{', '.join(given)} only apply to distillation; add --distill")
        return None
    from graphopt.passes.distill import DistillOptions, DistillPass
    from graphopt.passes.distill.substitute import EXTRA_HINT, torch_available

    if not torch_available():
        raise InputError(f"--distill needs PyTorch: {EXTRA_HINT}")
    given = {name: params[name] for name in ("epochs", "batch_size", "lr", "seed", "device") if params.get(name) is not None}
    student = params.get("student")
    if student is not None and not Path(student).is_file():
        raise InputError(f"student model not found: {student}")
    return DistillPass(DistillOptions(
        student=str(student) if student is not None else None,
        student_width=params.get("student_width"),
        loss=params.get("distill_loss") or "auto",
        **given,
    ))
