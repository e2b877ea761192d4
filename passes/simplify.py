"""``simplify``: onnxsim constant folding and fusions, then onnx_ir cleanup.

Steps:
1. onnxsim (constant folding, shape-op folding, Conv+BatchNorm fusion, eliminate no-op nodes),
   without the rewrites in :data:`ONNXSIM_SKIPPED` that undo onnxruntime's own fusions;
   skipped with a note when onnxsim cannot handle the model (e.g. unknown custom-domain ops, or
   weights over protobuf's 2 GB limit: onnxsim needs the whole model in one proto);
2. onnx_ir cleanup: constants lifted to initializers, identity elimination, common
   subexpression elimination, unused nodes / initializers / functions / opsets removed;
3. (``cpu`` target) transformer activations kept as 2-D ``[tokens, channels]`` rows between their Gemms,
   which drops the flatten / unflatten Reshapes and their shape chains (:mod:`graphopt.passes.token_rows`),
   then common subexpressions and unused nodes removed again;
4. (``cpu`` target) residual Adds of 3-D tensors read by a LayerNorm written as ``Sum``, so onnxruntime keeps
   Add + LayerNormalization instead of its slower CPU SkipLayerNormalization
   (:mod:`graphopt.passes.residual_sum`).

The pass is ``lossless``: the PassManager compares its outputs with the original model on the
evaluation data (or probe inputs) and rolls it back when they differ.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt import large
from graphopt.inspection import op_histogram
from graphopt.model_io import custom_domains
from graphopt.pass_base import GraphoptPass, GraphoptPassResult
from graphopt.passes.residual_sum import residual_sums
from graphopt.passes.token_rows import token_rows

ONNXSIM_SKIPPED = ("fuse_preceding_mul_into_conv",)
"""onnxsim optimizers left out. ``fuse_preceding_mul_into_conv`` folds the ``× 0.5`` of an erf-GELU
(``x · (1 + erf(x/√2)) · 0.5``) into the next Conv's weights: the outputs are equal, but onnxruntime
no longer recognises the GELU and runs it as five ops. Measured (ORT 1.31 CPU, 2 threads, batch 1,
interleaved): PP-OCRv6 rec 1.27× and det 1.10× the latency of the unsimplified model with it,
1.005× and 0.99× without; the int8 models built on the simplified graph inherit the difference.
(Names an onnxsim version does not know are ignored by onnxsim.)"""


@dataclasses.dataclass(frozen=True)
class SimplifyOptions:
    use_onnxsim: bool = True
    """Run onnxsim's constant folding and fusions before the onnx_ir cleanup."""
    fuse_batchnorm: bool = True
    """Let onnxsim fold BatchNormalization into the preceding Conv."""
    eliminate_common_subexpressions: bool = True
    residual_sum: bool = True
    """On the ``cpu`` target, write residual Adds read by a LayerNorm as ``Sum``
    (:mod:`graphopt.passes.residual_sum`): exact, and 3–8× faster on onnxruntime's CPU provider."""
    token_rows: bool = True
    """On the ``cpu`` target, keep transformer activations as 2-D rows between their Gemms
    (:mod:`graphopt.passes.token_rows`): the same values, fewer nodes."""


class SimplifyPass(GraphoptPass):
    """Constant folding, fusion and dead-code removal that must not change the outputs."""

    name = "simplify"
    Options = SimplifyOptions
    lossless = True

    def call(self, model: ir.Model) -> GraphoptPassResult:
        notes: list[str] = []
        before = op_histogram(model)
        working = model.clone()
        if self.options.use_onnxsim:
            unknown = custom_domains(working)
            if unknown:
                notes.append(f"onnxsim skipped: custom op domain(s) {', '.join(sorted(unknown))}")
            elif large.is_large(working):
                notes.append(f"onnxsim skipped: the weights ({large.weight_bytes(working) / 1024**3:.2f} GiB) exceed "
                             "protobuf's 2 GB limit and onnxsim needs the whole model in one proto; "
                             "onnx_ir cleanup only")
            else:
                simplified, note = _run_onnxsim(working, fuse_bn=self.options.fuse_batchnorm)
                if simplified is not None:
                    working = simplified
                if note:
                    notes.append(note)
        merge_and_prune: list[ir.passes.PassBase] = (
            [ir_common.CommonSubexpressionEliminationPass()] if self.options.eliminate_common_subexpressions else [])
        merge_and_prune += [ir_common.RemoveUnusedNodesPass(), ir_common.RemoveUnusedFunctionsPass(),
                            ir_common.RemoveUnusedOpsetsPass()]
        ir.passes.Sequential(ir_common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
                             ir_common.IdentityEliminationPass(), *merge_and_prune)(working)
        on_cpu = self.context.target.kind == "cpu"
        rows_moved = 0
        if self.options.token_rows and on_cpu:
            working, rows_moved = token_rows(working)
            if rows_moved:  # the per-layer shape chains are now equal: CSE merges them
                ir.passes.Sequential(*merge_and_prune)(working)
        sums = residual_sums(working) if self.options.residual_sum and on_cpu else []
        after = op_histogram(working)
        removed = {op: before[op] - after.get(op, 0) for op in before if before[op] > after.get(op, 0)}
        stats = {"nodes_removed": sum(before.values()) - sum(after.values())}
        if removed:
            stats["ops_removed"] = ", ".join(f"{op}×{n}" for op, n in sorted(removed.items(), key=lambda kv: -kv[1]))
        if sums:
            stats["residual_sums"] = len(sums)
        if rows_moved:
            stats["ops_on_token_rows"] = rows_moved
        modified = (before != after or bool(sums) or bool(rows_moved)
                    or len(working.graph.initializers) != len(model.graph.initializers))
        return self.result(working, modified, stats, notes)


def _run_onnxsim(model: ir.Model, fuse_bn: bool) -> tuple[ir.Model | None, str | None]:
    """onnxsim on a copy of the proto; ``(None, reason)`` when it cannot simplify this model."""
    import onnxsim

    try:
        simplified, _ = onnxsim.simplify(large.inline_proto(model), check_n=0, skip_fuse_bn=not fuse_bn,
                                         skipped_optimizers=list(ONNXSIM_SKIPPED))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return None, f"onnxsim skipped: {first}"
    return ir.from_proto(simplified), None
