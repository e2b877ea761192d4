"""CLI flags of the ``fp16`` pass (fp16 / bf16 conversion with a self-check)."""

from __future__ import annotations

import click

OPTIONS = [
    click.option("--fp16", is_flag=True, help="Convert weights and compute to fp16 (fp32 kept where it would overflow)."),
    click.option("--bf16", is_flag=True, help="Convert weights and compute to bf16 (fp32's range, less precision)."),
    click.option("--keep-io-types/--fp16-io", "keep_io_types", default=True, show_default=True,
                 help="Keep graph inputs/outputs float32 (--fp16-io converts them too)."),
    click.option("--fp16-block-ops", metavar="OPS", help="Comma-separated op types fp16/bf16 keeps in fp32."),
    click.option("--fp16-block-nodes", metavar="NAMES", help="Comma-separated node names fp16/bf16 keeps in fp32."),
]

_FP16_ONLY = ("fp16_block_ops", "fp16_block_nodes")


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


def build_pass(params: dict):
    """``Fp16Pass`` for ``--fp16`` or ``--bf16``; fp16-only flags without either are a usage error."""
    from graphopt.errors import InputError

    fp16, bf16 = bool(params.get("fp16")), bool(params.get("bf16"))
    if fp16 and bf16:
        raise InputError("--fp16 and --bf16 exclude each other; choose one precision")
    if not (fp16 or bf16):
        given = [f"--{name.replace('_', '-')}" for name in _FP16_ONLY if params.get(name)]
        if params.get("keep_io_types") is False:
            given.append("--fp16-io")
        if given:
            raise InputError(f"{', '.join(given)} need --fp16 or --bf16")
        return None
    from graphopt.passes.fp16 import Fp16Options, Fp16Pass

    options = Fp16Options(
        precision="bf16" if bf16 else "fp16",
        keep_io_types=params.get("keep_io_types", True),
        block_ops=_names(params.get("fp16_block_ops")),
        block_nodes=_names(params.get("fp16_block_nodes")),
    )
    return Fp16Pass(options)
