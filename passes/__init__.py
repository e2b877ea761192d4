"""graphopt passes, one module per rewrite (a subpackage per family: ``int8/``, ``fp16/``).
Installed as ``graphopt.passes``.

``PASS_REGISTRY`` maps a pass's kebab-case name (CLI flag, pipeline-file key) to where its class
lives, so that importing this package stays cheap: a pass module (and its heavy libraries) is
imported only when the pass is used.
"""

from __future__ import annotations

import importlib

PASS_REGISTRY: dict[str, str] = {
    "simplify": "graphopt.passes.simplify:SimplifyPass",
    "prune": "graphopt.passes.prune:PrunePass",
    "int8": "graphopt.passes.int8:Int8Pass",
    "fp16": "graphopt.passes.fp16:Fp16Pass",
    "distill": "graphopt.passes.distill:DistillPass",
}


def pass_class(name: str):
    """The pass class registered under ``name``."""
    from graphopt.errors import InputError

    if name not in PASS_REGISTRY:
        raise InputError(f"unknown pass '{name}'; known passes: {', '.join(sorted(PASS_REGISTRY))}")
    module_name, class_name = PASS_REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
