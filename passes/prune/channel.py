"""Structured channel pruning of an ONNX graph: :func:`prune_channels`.

Steps:

1. lift ``Constant`` nodes to initializers, name every node, run the model once on probe inputs
   to learn every tensor's dims (:mod:`.probe`);
2. label the channels and find the groups that must shrink together (:mod:`.analysis`,
   :mod:`.rules`); the first/last layers and the ``skip`` list keep their output channels;
3. score each channel over its whole group (:mod:`.importance`) and remove the
   ``floor(amount · n)`` lowest-scoring of the ``n`` prunable channels of every group with at least
   ``min_channels`` of them;
4. cut the weights, rewrite sizes/targets/attributes (:mod:`.channel_rewrite`);
5. prove the result: the pruned model must give the graph outputs their original shapes, and —
   unless a normalisation over the channel axis makes the result approximate by design — compute
   exactly what the original computes once the removed channels' weights are zeroed (the *masked*
   twin), on the probe inputs. A mismatch raises instead of returning a wrong model.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Collection
from typing import Literal

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

from graphopt.errors import InputError, PassFailedError
from graphopt.model_io import load_model
from graphopt.passes.prune.analysis import ChannelAnalysis, ChannelPlan, Keep
from graphopt.passes.prune.atoms import FIXED
from graphopt.passes.prune.channel_rewrite import apply_plan, keep_function, zero_removed
from graphopt.passes.prune.importance import CRITERIA, class_scores
from graphopt.passes.prune.layers import prepared_copy, resolve_skip, weight_index
from graphopt.passes.prune.probe import run_probe

MIN_CHANNELS = 4
"""Groups with fewer prunable channels than this are left alone ("tiny")."""
EXACT_RTOL = 1e-4
EXACT_ATOL = 1e-6
"""Exactness check: outputs of the pruned model and the masked twin may differ by ``EXACT_RTOL`` of the
output's largest magnitude plus ``EXACT_ATOL`` (summation order changes when terms are removed; a
sigmoid map near 0 on probe inputs has a tiny magnitude)."""


@dataclasses.dataclass(frozen=True)
class PrunedGroup:
    """One group of coupled channels that was pruned."""

    members: tuple[str, ...]
    """Weighted layers whose weights were cut (producers and readers of these channels)."""
    channels_before: int
    channels_after: int
    """Width of the group's widest producer before → after."""
    approximate: tuple[str, ...] = ()
    """Why the kept channels' results change (a normalisation over the channel axis); empty when exact."""
    fixed: int = 0
    """Channels of this group that were left alone."""
    fixed_reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class SkippedDim:
    """Channels left alone, with the reason."""

    members: tuple[str, ...]
    channels: int
    reason: str


@dataclasses.dataclass
class ChannelPruneOutcome:
    model: ir.Model
    """A new model (the input is untouched): valid, same graph inputs/outputs and shapes."""
    groups: list[PrunedGroup]
    skipped: list[SkippedDim]
    exact_check: str = "not run"
    """``passed`` (pruned model = masked original on probe inputs), or why it was not run."""


def prune_channels(model: ir.Model, amount: float, *, criterion: Literal["l1", "l2"] = "l2",
                   skip: Collection[str] = (), skip_first_last: bool = True,
                   min_channels: int = MIN_CHANNELS, round_to: int = 1,
                   verify: bool = True) -> ChannelPruneOutcome:
    """Remove ``amount`` of the channels of every prunable group of ``model`` (module docstring).

    ``model`` may also be a path or a ``ModelProto``. ``skip`` names layers (node or weight names) whose output channels stay; ``skip_first_last``
    adds the first and last weighted layers. ``round_to`` keeps channel counts multiples of it where the
    group's width allows (:func:`removal_count`). Raises :class:`InputError` for a bad ``amount``,
    ``criterion`` or skip name, :class:`PassFailedError` if the result fails its own checks.
    """
    if not 0.0 <= amount < 1.0:
        raise InputError(f"channel pruning amount must be in [0, 1), got {amount}")
    if criterion not in CRITERIA:
        raise InputError(f"pruning criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    model = load_model(model)
    working = prepared_copy(model)
    skipped_layers = resolve_skip(working, skip, skip_first_last)
    if amount == 0.0:
        return ChannelPruneOutcome(model.clone(), [], [], "not needed: nothing removed")
    ir_common.ShapeInferencePass(strict_mode=False)(working)  # which dims are static (ints) vs dynamic
    probe = run_probe(working)
    plan = ChannelAnalysis(working, probe, skipped_layers).run()
    scores = class_scores(plan, criterion)
    removed, groups, skipped = _decide(plan, scores, amount, min_channels, round_to)
    if not removed:
        return ChannelPruneOutcome(model.clone(), [], skipped, "not needed: nothing removed")
    keep = keep_function(plan, removed)
    approximate = sorted({r for root in removed for r in plan.atoms.approx_reasons(root)})
    masked = None
    if verify and not approximate:
        zero_removed(working, plan, keep)
        masked = ir.to_proto(working)
    apply_plan(working, plan, keep)
    exact = _check(model, working, masked, probe.feeds, approximate)
    return ChannelPruneOutcome(working, groups, skipped, exact)


def removal_count(total: int, prunable: int, amount: float, round_to: int, positions: int = 1) -> int:
    """How many of a group's ``prunable`` channel classes (of ``total``) to remove.

    ``floor(amount · prunable)``, moved to the nearest count (ties: remove fewer) that keeps the kept
    *width* — kept classes × ``positions`` (the channels each class spans: the number of heads or of
    conv groups kept alike) — a multiple of ``round_to`` when the full width is one (channel counts
    that are multiples of 8 keep CPU/GPU kernels on their fast paths). Never more than the prunable
    classes, never all of them; a small group that rounding would leave whole is pruned unrounded."""
    count = math.floor(amount * prunable + 1e-9)
    step = round_to // math.gcd(round_to, max(positions, 1))
    if step > 1 and total % step == 0 and count:
        kept = total - count
        down, up = (kept // step) * step, -(-kept // step) * step
        nearest = up if up - kept <= kept - down or down == 0 else down
        rounded = total - nearest
        if 0 < rounded <= prunable:
            count = rounded
    return max(count, 0)


def _decide(plan: ChannelPlan, scores: np.ndarray, amount: float, min_channels: int,
            round_to: int = 1) -> tuple[set[int], list[PrunedGroup], list[SkippedDim]]:
    """Choose the classes to remove, group by group; describe every group."""
    atoms = plan.atoms
    classes: dict[int, set[int]] = defaultdict(set)
    sources_of: dict[int, list[int]] = defaultdict(list)
    for index, source in enumerate(atoms.sources):
        group = atoms.source_group(index)
        sources_of[group].append(index)
        for atom in range(source.first_atom, source.first_atom + source.channels):
            classes[group].add(atoms.find(atom))
    members = _members(plan)
    widths = _widths(plan)
    removed: set[int] = set()
    chosen: dict[int, list[int]] = {}
    for group, roots in classes.items():
        prunable = sorted(r for r in roots if not atoms.is_fixed(r))
        width = max((len(widths[s]) for s in sources_of[group] if s in widths), default=len(roots))
        positions = width // len(roots) if width % len(roots) == 0 else 1
        count = removal_count(len(roots), len(prunable), amount, round_to, positions)
        if len(prunable) >= min_channels and count > 0:
            order = sorted(prunable, key=lambda r: (scores[r], r))
            chosen[group] = order[:count]
            removed.update(order[:count])
    keep = keep_function(plan, removed)
    pruned: list[PrunedGroup] = []
    skipped: list[SkippedDim] = []
    for group in sorted(classes, key=lambda g: atoms.sources[g].first_atom):
        roots = classes[group]
        names = tuple(members.get(group, ()))
        or_names = names or tuple(atoms.sources[s].node for s in sources_of[group])
        fixed_roots = [r for r in roots if atoms.is_fixed(r)]
        reasons = _reasons(atoms, fixed_roots)
        width_ids = max((widths[s] for s in sources_of[group] if s in widths), key=len, default=None)
        before = len(width_ids) if width_ids is not None else len(roots)
        if group in chosen:
            after = int(keep(width_ids).sum()) if width_ids is not None else len(roots) - len(chosen[group])
            approx = tuple(sorted({r for root in chosen[group] for r in atoms.approx_reasons(root)}))
            pruned.append(PrunedGroup(names, before, after, approx, len(fixed_roots), reasons))
        else:
            prunable = len(roots) - len(fixed_roots)
            if prunable == 0:
                reason = "; ".join(reasons) or "not prunable"
            elif prunable < min_channels:
                reason = f"only {prunable} prunable channel{'s' if prunable != 1 else ''} (fewer than {min_channels})"
            else:
                reason = "amount too small to remove a whole channel"
            skipped.append(SkippedDim(or_names, before, reason))
    return removed, pruned, skipped


def _members(plan: ChannelPlan) -> dict[int, list[str]]:
    """group → names of the weighted layers whose weights a cut of that group touches."""
    found: dict[int, list[str]] = defaultdict(list)
    for cut in plan.cuts:
        if cut.role == "param" or weight_index(cut.node) != cut.index:
            continue
        for group in {plan.atoms.group_of(int(a)) for a in np.unique(cut.ids) if a != FIXED}:
            if cut.node.name not in found[group]:
                found[group].append(cut.node.name)
    return found


def _widths(plan: ChannelPlan) -> dict[int, np.ndarray]:
    """source index → labels of its output channels (its weight's ``out`` cut)."""
    by_node = {source.node: index for index, source in enumerate(plan.atoms.sources)}
    found = {}
    for cut in plan.cuts:
        if cut.role == "out" and weight_index(cut.node) == cut.index and cut.node.name in by_node:
            found[by_node[cut.node.name]] = cut.ids
    return found


def _reasons(atoms, roots: list[int], limit: int = 3) -> tuple[str, ...]:
    counted: dict[str, int] = defaultdict(int)
    for root in roots:
        for reason in atoms.fixed_reasons(root):
            counted[reason] += 1
    ordered = sorted(counted, key=lambda r: -counted[r])
    return tuple(ordered[:limit])


def _check(original: ir.Model, pruned: ir.Model, masked, feeds: dict[str, np.ndarray],
           approximate: list[str]) -> str:
    """Outputs keep their shapes; the pruned model equals its masked twin (module docstring)."""
    from graphopt.engines import ort as ort_engine
    from graphopt.errors import first_line

    try:
        got = ort_engine.build(pruned).run(feeds)
    except Exception as exc:
        raise PassFailedError(f"channel pruning produced a model onnxruntime cannot run: {first_line(exc)}") from exc
    reference = ort_engine.build(original).run(feeds)
    for name, array in reference.items():
        if got[name].shape != array.shape:
            raise PassFailedError(f"channel pruning changed the shape of output '{name}' "
                                  f"{array.shape} → {got[name].shape} (internal error)")
    if approximate:
        return "skipped: " + approximate[0]
    if masked is None:
        return "not run"
    twin = ort_engine.build(masked).run(feeds)
    for name, array in twin.items():
        scale = max(float(np.abs(array).max()) if array.size else 0.0, 1e-6)
        error = float(np.abs(got[name].astype(np.float64) - array).max()) if array.size else 0.0
        if not error <= EXACT_RTOL * scale + EXACT_ATOL:
            raise PassFailedError(f"channel pruning is not exact on output '{name}' (max |Δ| {error:.3g} "
                                  f"vs masked original; internal error: the pruned model is discarded)")
    return "passed"


__all__ = ["ChannelPruneOutcome", "PrunedGroup", "SkippedDim", "prune_channels", "Keep"]
