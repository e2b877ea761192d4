"""CLI flags of the ``prune`` pass (channel, unstructured or N:M pruning)."""

from __future__ import annotations

import click

SKIP_DEFAULT = "first-last"
SKIP_NONE = "none"

OPTIONS = [
    click.option("--prune", "prune", type=click.FloatRange(0.0, 1.0, max_open=True), metavar="AMOUNT",
                 help="Prune before quantizing: remove this fraction of each channel group (channel mode) or of "
                      "the weights (unstructured); 0 changes nothing."),
    click.option("--prune-mode", metavar="channel|unstructured|2:4",
                 help="channel: remove whole channels (smaller, faster everywhere); unstructured: zero the "
                      "smallest weights; N:M such as 2:4: keep N of every M input-channel weights (sparse Tensor "
                      "Cores) [default: channel]."),
    click.option("--prune-criterion", type=click.Choice(["l1", "l2"]),
                 help="Channel importance over the whole group: l2 (L2,1 norm) or l1 [default: l2]."),
    click.option("--prune-scope", type=click.Choice(["layer", "global"]),
                 help="Unstructured: reach the amount in every layer, or with one global threshold [default: layer]."),
    click.option("--prune-skip", metavar="NAMES",
                 help="Comma-separated node or weight names to leave alone, added to the first and last weighted "
                      "layers (left alone by default); 'none' drops that default."),
    click.option("--prune-store", type=click.Choice(["dense", "sparse"]),
                 help="sparse: write unstructured / N:M weights as ONNX sparse initializers where smaller "
                      "[default: dense]."),
]

_PRUNE_ONLY = ("prune_mode", "prune_criterion", "prune_scope", "prune_skip", "prune_store")


def parse_skip(text: str | None) -> tuple[tuple[str, ...], bool]:
    """``--prune-skip`` → (names, skip_first_last)."""
    names: list[str] = []
    skip_first_last = True
    for part in (p.strip() for p in (text or "").split(",")):
        if not part or part == SKIP_DEFAULT:
            continue
        if part == SKIP_NONE:
            skip_first_last = False
        else:
            names.append(part)
    return tuple(names), skip_first_last


def build_pass(params: dict):
    """``PrunePass`` when ``--prune`` is given; the other prune flags without it are a usage error."""
    from graphopt.errors import InputError

    if params.get("prune") is None:
        given = [f"--{name.replace('_', '-')}" for name in _PRUNE_ONLY if params.get(name) is not None]
        if given:
            raise InputError(f"{', '.join(given)} only apply to pruning; add --prune AMOUNT")
        return None
    from graphopt.passes.prune import PruneOptions, PrunePass

    names, skip_first_last = parse_skip(params.get("prune_skip"))
    chosen = {key: params[flag] for key, flag in (("mode", "prune_mode"), ("criterion", "prune_criterion"),
                                                  ("scope", "prune_scope"), ("store", "prune_store"))
              if params.get(flag) is not None}
    return PrunePass(PruneOptions(amount=float(params["prune"]), skip=names, skip_first_last=skip_first_last, **chosen))
