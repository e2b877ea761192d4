"""``prune``: the pass behind ``--prune AMOUNT --prune-mode channel|unstructured|N:M``.

* ``channel`` (default): structured channel pruning (:mod:`.channel`) — the graph gets narrower,
  so it is smaller and faster on every backend;
* ``unstructured``: magnitude pruning to sparsity ``amount`` (:mod:`.unstructured`), per layer or
  with one global threshold; same graph, same speed on dense kernels;
* ``N:M`` (``2:4``): semi-structured sparsity (:mod:`.nm`) for sparse Tensor Cores; ``amount`` only
  switches it on (the sparsity is ``1 − N/M``), the pruned weights are recorded in the metadata.

``store="sparse"`` (unstructured / N:M) writes the pruned weights as ONNX sparse initializers when
the model is saved (:mod:`graphopt.sparse_initializers`). Pruning without retraining costs
accuracy: the manager's budget applies as for every pass, and the message points to distillation.
The pass refuses a quantized model and runs before int8/fp16.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import numpy as np
import onnx_ir as ir

from graphopt.data import feed_shapes, input_specs
from graphopt.errors import InputError, PreconditionFailed
from graphopt.inspection import is_quant_op, macs_by_node, op_histogram
from graphopt.pass_base import GraphoptPass, GraphoptPassResult
from graphopt.passes.prune.channel import MIN_CHANNELS, prune_channels
from graphopt.passes.prune.importance import CRITERIA
from graphopt.passes.prune.layers import prepared_copy, weighted_layers
from graphopt.passes.prune.nm import parse_pattern, prune_n_m
from graphopt.passes.prune.unstructured import MIN_ELEMENTS, SparsityOutcome, prune_magnitude
from graphopt.sparse_initializers import STORE_SPARSE_KEY, sparse_bytes
from graphopt.sparsity import sparsity_key

MODES = ("channel", "unstructured", "2:4")
ROUND_TO = 8
"""Named modes; any ``N:M`` with 0 < N < M is accepted too."""
DENSE_NOTE = ("dense kernels do the same work on zeros: latency is unchanged; the zeros pay in "
              "compressed size, with --prune-store sparse, or on sparse hardware")
GATE_HINT = ("pruning without retraining loses accuracy: prune less, or recover it by distilling the pruned "
             "model from the original (--distill)")


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    amount: float = 0.5
    """Fraction removed: of each group's channels (``channel``) or of the weights (``unstructured``).
    0 is an identity. Ignored by ``N:M`` beyond switching it on (N:M fixes the sparsity)."""
    mode: str = "channel"
    """``channel`` | ``unstructured`` | ``N:M`` such as ``2:4``."""
    criterion: Literal["l1", "l2"] = "l2"
    """Channel importance over the whole group: ``l2`` (L2,1 norm) or ``l1``."""
    scope: Literal["layer", "global"] = "layer"
    """Unstructured: the target per weight, or one threshold over all weights."""
    skip: tuple[str, ...] = ()
    """Node or weight names left alone (their output channels / their weights)."""
    skip_first_last: bool = True
    """Also leave the first and last weighted layers alone."""
    store: Literal["dense", "sparse"] = "dense"
    """``sparse``: write unstructured / N:M weights as ONNX sparse initializers where smaller."""
    min_channels: int = MIN_CHANNELS
    """Channel groups with fewer prunable channels stay whole."""
    round_to: int = ROUND_TO
    """Channel mode: prune a little less so that kept channel counts stay multiples of this (where the
    group's width is one). Measured on the ResNet-18-style CNN at 0.3 (ORT CPU, interleaved): 0.66× the
    fp32 latency with multiples of 8 against 0.81× with the exact amount (45/90/180/359 channels)."""
    min_elements: int = MIN_ELEMENTS
    """Unstructured / N:M: weights with fewer values stay dense."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.amount < 1.0:
            raise InputError(f"--prune must be in [0, 1), got {self.amount}")
        if self.mode not in ("channel", "unstructured"):
            parse_pattern(self.mode)
        if self.criterion not in CRITERIA:
            raise InputError(f"--prune-criterion must be l1 or l2, got {self.criterion!r}")
        if self.scope not in ("layer", "global"):
            raise InputError(f"--prune-scope must be layer or global, got {self.scope!r}")
        if self.store not in ("dense", "sparse"):
            raise InputError(f"--prune-store must be dense or sparse, got {self.store!r}")
        if self.store == "sparse" and self.mode == "channel":
            raise InputError("--prune-store sparse needs zeros to skip: use it with --prune-mode unstructured or 2:4 "
                             "(channel pruning removes channels instead)")
        if self.round_to < 1 or self.min_channels < 1 or self.min_elements < 1:
            raise InputError("prune round_to, min_channels and min_elements must be ≥ 1")
        if self.scope == "global" and self.mode != "unstructured":
            raise InputError("--prune-scope global applies to --prune-mode unstructured only")


class PrunePass(GraphoptPass):
    """Channel, unstructured or N:M pruning of the float model."""

    name = "prune"
    Options = PruneOptions
    refuses_after = frozenset({"int8", "fp16"})
    gate_hint = GATE_HINT

    def requires(self, model: ir.Model) -> None:
        quant = sorted(op for op in op_histogram(model) if is_quant_op(op))
        if quant:
            raise PreconditionFailed(f"model is already quantized ({', '.join(quant[:4])} present); prune the "
                                     "float model and quantize afterwards (--prune … --int8 in one command)")
        if not weighted_layers(model):
            raise PreconditionFailed("nothing to prune: the model has no Conv/ConvTranspose/Gemm/MatMul with a "
                                     "constant weight")

    def call(self, model: ir.Model) -> GraphoptPassResult:
        options = self.options
        if options.amount == 0.0:
            return self.result(model.clone(), False, {"amount": 0.0}, ["--prune 0: nothing removed"])
        if options.mode == "channel":
            return self._channel(model)
        return self._sparse(model)

    # ------------------------------------------------------------ channel

    def _channel(self, model: ir.Model) -> GraphoptPassResult:
        options = self.options
        outcome = prune_channels(model, options.amount, criterion=options.criterion, skip=options.skip,
                                 skip_first_last=options.skip_first_last, min_channels=options.min_channels,
                                 round_to=options.round_to)
        before_model = prepared_copy(model)
        shapes = mac_shapes(model)
        macs_before = macs_by_node(before_model, shapes)
        macs_after = macs_by_node(outcome.model, shapes)
        rows = [{
            "layers": _names(g.members),
            "channels": f"{g.channels_before}→{g.channels_after}",
            "MACs": _ratio_text(sum(macs_before.get(n) or 0 for n in g.members),
                                sum(macs_after.get(n) or 0 for n in g.members)),
            "note": "; ".join([*g.approximate[:1], *([f"{g.fixed} channels kept: {g.fixed_reasons[0]}"]
                                                     if g.fixed and g.fixed_reasons else [])]),
        } for g in outcome.groups]
        left = [{"layers": _names(s.members), "channels": s.channels, "reason": s.reason} for s in outcome.skipped]
        params = (parameter_count(model), parameter_count(outcome.model))
        macs = (_total(macs_before), _total(macs_after))
        stats = {
            "mode": "channel", "amount": options.amount, "criterion": options.criterion,
            "groups_pruned": len(outcome.groups), "groups_left": len(outcome.skipped),
            "params": _ratio_text(*params), "MACs": _ratio_text(*macs),
            "exact_check": outcome.exact_check,
            "groups": rows, "left_alone": left,
        }
        notes = []
        if any(g.approximate for g in outcome.groups):
            notes.append("normalisations over pruned channels (LayerNorm, reductions) now see the kept channels only")
        if not outcome.groups:
            notes.append("no channel group could be pruned (see left_alone)")
        return self.result(outcome.model, bool(outcome.groups), stats, notes)

    # ------------------------------------------------------------ unstructured / N:M

    def _sparse(self, model: ir.Model) -> GraphoptPassResult:
        options = self.options
        notes = [DENSE_NOTE]
        if options.mode == "unstructured":
            outcome = prune_magnitude(model, options.amount, scope=options.scope, skip=options.skip,
                                      skip_first_last=options.skip_first_last, min_elements=options.min_elements)
            stats = {"mode": "unstructured", "amount": options.amount, "scope": options.scope}
        else:
            n, m = parse_pattern(options.mode)
            outcome = prune_n_m(model, n, m, skip=options.skip, skip_first_last=options.skip_first_last,
                                min_elements=options.min_elements)
            stats = {"mode": f"{n}:{m}", "metadata": sparsity_key(n, m)}
            if abs(options.amount - (1 - n / m)) > 1e-9:
                notes.append(f"{n}:{m} sparsity is {1 - n / m:.0%} whatever --prune says ({options.amount})")
            notes.append(f"{len(outcome.weights)} weights follow {n}:{m} along their input channels "
                         f"(recorded under metadata '{sparsity_key(n, m)}' for sparse-kernel engine builds)")
        stats.update({
            "weights_pruned": len(outcome.weights), "sparsity": round(outcome.sparsity, 4),
            "weights": [{"weight": w.weight, "shape": "×".join(map(str, w.shape)),
                         "zeros": f"{w.zeros_before / w.size:.0%}→{w.sparsity:.1%}"} for w in outcome.weights],
            "left_dense": [{"weight": name, "reason": reason} for name, reason in outcome.skipped],
        })
        if options.store == "sparse":
            stats.update(self._store_sparse(outcome))
        return self.result(outcome.model, bool(outcome.weights), stats, notes)

    def _store_sparse(self, outcome: SparsityOutcome) -> dict:
        values = outcome.model.graph.initializers
        smaller = [w.weight for w in outcome.weights
                   if sparse_bytes(values[w.weight].const_value.numpy()) < values[w.weight].const_value.nbytes]
        if smaller:
            outcome.model.metadata_props[STORE_SPARSE_KEY] = json.dumps(sorted(smaller))
        dense = sum(values[n].const_value.nbytes for n in smaller)
        sparse = sum(sparse_bytes(values[n].const_value.numpy()) for n in smaller)
        return {"stored_sparse": len(smaller), "kept_dense": len(outcome.weights) - len(smaller),
                "sparse_bytes": _ratio_text(dense, sparse)}


def mac_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    """Input shapes MACs are counted at: one feed of batch 1, other dynamic dims as the probe inputs choose."""
    return feed_shapes(input_specs(model), batch=1)


def parameter_count(model: ir.Model) -> int:
    """Values of the main graph's weights: float and 8-bit initializers with ≥ 1 dim, plus int32 biases
    (a quantized model's parameters count like its float original's; shape constants do not)."""
    kinds = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4, ir.DataType.INT32}
    return int(sum(np.prod(v.const_value.shape.dims) for v in model.graph.initializers.values()
                   if v.const_value is not None and len(v.const_value.shape) >= 1
                   and (v.const_value.dtype.is_floating_point() or v.const_value.dtype in kinds)))


def _total(macs: dict[str, int | None]) -> int:
    return int(sum(v for v in macs.values() if v))


def _ratio_text(before: int, after: int) -> str:
    ratio = f" (×{after / before:.3f})" if before else ""
    return f"{_human(before)}→{_human(after)}{ratio}"


def _human(n: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(int(n))


def _names(members: tuple[str, ...], limit: int = 4) -> str:
    shown = ", ".join(members[:limit])
    return shown + (f" +{len(members) - limit}" if len(members) > limit else "")
