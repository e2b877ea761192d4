"""CLI flags of the ``simplify`` pass."""

from __future__ import annotations

import click

OPTIONS = [
    click.option("--simplify/--no-simplify", default=True, show_default=True,
                 help="Constant folding and cleanup (onnxsim + onnx_ir)."),
]


def build_pass(params: dict):
    """``SimplifyPass`` when ``--simplify`` (the default) is on."""
    if not params.get("simplify"):
        return None
    from graphopt.passes.simplify import SimplifyPass

    return SimplifyPass()
