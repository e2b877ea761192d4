"""Channel group analysis: which channels of which tensors must shrink together, and how.

One pass over the graph in topological order labels every tensor axis that carries prunable
channels (see :mod:`.atoms`); the op rules in :mod:`.rules` say, per op, how labels flow from inputs
to outputs, which constant inputs must be cut along which axis, which integer inputs (split sizes,
reshape targets) or attributes must be recomputed, and which channels can only be left alone.
Anything without a rule fixes the channels it touches, so an unmodelled pattern is left unpruned
and reported, never mis-pruned.

The result is a :class:`ChannelPlan`: the atoms with their classes, and the edits to make once
the classes to remove are chosen (:mod:`.channel_rewrite` applies them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from graphopt.passes.prune.atoms import FIXED, ChannelAtoms
from graphopt.passes.prune.probe import ProbeRun
from graphopt.passes.prune.shape_values import Elem, Origin, ShapeVec, literal_vec, read_at

Keep = Callable[[np.ndarray], np.ndarray]
"""``keep(ids)`` → boolean mask of the positions that stay."""

DEFAULT_DOMAINS = ("", "ai.onnx")
SOURCE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
"""Ops whose output channels are atoms (when their weight is a constant)."""
MAX_VEC = 16
"""Integer tensors of at most this many elements are tracked as shape vectors."""


@dataclasses.dataclass
class WeightCut:
    """Cut constant input ``index`` of ``node`` along ``axis``: position ``i`` stays iff ``ids[i]`` does.

    ``role``: ``"out"`` (the output channels of a weighted layer, and its bias), ``"in"`` (a
    weighted layer reading pruned channels), ``"param"`` (a per-channel constant of another op).
    ``zero_safe``: setting removed positions to zero keeps the removed channels inert (used by the
    exactness check; false for divisors, exponents, variances)."""

    node: ir.Node
    index: int
    axis: int
    ids: np.ndarray
    role: str
    zero_safe: bool = True


@dataclasses.dataclass
class IntRewrite:
    """Replace integer input ``index`` of ``node`` by ``compute(keep)`` (added when missing)."""

    node: ir.Node
    index: int
    compute: Callable[[Keep], np.ndarray]
    drop_attribute: str | None = None
    """An attribute the new input replaces (``Split``'s ``num_outputs``)."""


@dataclasses.dataclass
class LiteralRewrite:
    """Replace input ``origin.index`` of ``origin.node`` by a constant: ``base`` with element
    ``origin.position`` set to the kept count of ``ids`` (``None``: to its original value)."""

    origin: Origin
    ids: np.ndarray | None
    base: np.ndarray


@dataclasses.dataclass
class AttrRewrite:
    node: ir.Node
    name: str
    compute: Callable[[Keep], int]


@dataclasses.dataclass
class ChannelPlan:
    """Everything the rewrite needs, plus what the report says about it."""

    atoms: ChannelAtoms
    cuts: list[WeightCut]
    int_rewrites: list[IntRewrite]
    literal_rewrites: list[LiteralRewrite]
    attr_rewrites: list[AttrRewrite]


class ChannelAnalysis:
    """Labels channel axes over the whole graph; rules call the helpers below."""

    def __init__(self, model: ir.Model, probe: ProbeRun, skipped: dict[str, str]) -> None:
        self.model = model
        self.probe = probe
        self.skipped = skipped
        """node name → why its output channels are not pruned."""
        self.atoms = ChannelAtoms()
        self.labels: dict[ir.Value, dict[int, np.ndarray]] = {}
        self.vecs: dict[ir.Value, ShapeVec] = {}
        self._cuts: dict[tuple[int, int, int], WeightCut] = {}
        self._int_rewrites: list[IntRewrite] = []
        self._attr_rewrites: list[AttrRewrite] = []
        self._same_count: list[tuple[np.ndarray | None, np.ndarray | None, str]] = []
        self._literal_targets: dict[tuple[int, int, int], tuple[Origin, list[np.ndarray | None], list[Elem]]] = {}
        self._claimed: set[int] = set()

    # ------------------------------------------------------------ the walk

    def run(self) -> ChannelPlan:
        from graphopt.passes.prune.rules import RULES, VEC_RULES, unknown_op

        graph = self.model.graph
        for node in graph:
            self._claimed = set()
            known = node.domain in DEFAULT_DOMAINS
            vec_rule = VEC_RULES.get(node.op_type) if known else None
            if vec_rule is not None and self._vec_inputs_ok(node) and vec_rule(self, node):
                self._consume_unclaimed_vecs(node)
                continue
            self._claimed = set()
            rule = RULES.get(node.op_type) if known else None
            touched = any(v is not None and (v in self.labels or v in self.vecs) for v in node.inputs)
            if rule is not None and (touched or node.op_type in SOURCE_OPS):
                rule(self, node)
            elif touched:
                unknown_op(self, node)
            self._consume_unclaimed_vecs(node)
            if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for attr in node.attributes.values()):
                self._fix_captures(node)
        for value in graph.outputs:
            for ids in self.labels.get(value, {}).values():
                self.atoms.fix(ids, f"reaches graph output '{value.name}'")
            if value in self.vecs:
                self.consume_vec_opaquely(self.vecs[value], f"its count is graph output '{value.name}'")
        literals = self._settle_requirements()
        return ChannelPlan(self.atoms, list(self._cuts.values()), self._int_rewrites, literals, self._attr_rewrites)

    def _vec_inputs_ok(self, node: ir.Node) -> bool:
        """A shape-vector op runs symbolically when every present input is tracked or a small int constant."""
        if node.op_type == "Shape":
            return True
        inputs = [v for v in node.inputs if v is not None]
        return bool(inputs) and all(v in self.vecs or self._small_int_const(v) is not None for v in inputs)

    def _small_int_const(self, value: ir.Value) -> np.ndarray | None:
        array = self.const(value)
        if array is None or array.dtype.kind not in "iu" or array.size > MAX_VEC or array.ndim > 1:
            return None
        return array

    def _consume_unclaimed_vecs(self, node: ir.Node) -> None:
        for index, value in enumerate(node.inputs):
            if value is not None and index not in self._claimed and value in self.vecs:
                self.consume_vec_opaquely(self.vecs[value], f"read by {node.op_type} '{node.name}'")

    def _fix_captures(self, node: ir.Node) -> None:
        """Values of the main graph read inside a subgraph: their channels are left alone."""
        for attr in node.attributes.values():
            graphs = [attr.value] if attr.type == ir.AttributeType.GRAPH else list(attr.value or ())
            for sub in graphs:
                for inner in ir.traversal.RecursiveGraphIterator(sub):
                    for value in inner.inputs:
                        if value is None:
                            continue
                        for ids in self.labels.get(value, {}).values():
                            self.atoms.fix(ids, f"read inside a subgraph of {node.op_type} '{node.name}'")
                        if value in self.vecs:
                            self.consume_vec_opaquely(self.vecs[value], f"read inside {node.op_type} '{node.name}'")

    # ------------------------------------------------------------ helpers for rules

    def shape(self, value: ir.Value | None) -> tuple[int, ...] | None:
        return self.probe.shape(value)

    def const(self, value: ir.Value | None) -> np.ndarray | None:
        """The value of an initializer (constants were lifted before the analysis)."""
        if value is None or value.const_value is None:
            return None
        return value.const_value.numpy()

    def labels_of(self, value: ir.Value | None) -> dict[int, np.ndarray]:
        if value is None:
            return {}
        return self.labels.get(value, {})

    def set_labels(self, value: ir.Value, labels: dict[int, np.ndarray]) -> None:
        """Label ``value``'s axes; an axis of length 1 is never pruned and keeps no label."""
        shape = self.shape(value)
        clean = {}
        for axis, ids in labels.items():
            if ids is None:
                continue
            if shape is None or axis >= len(shape) or shape[axis] != len(ids):
                self.atoms.fix(ids, f"internal: axis {axis} of '{value.name}' does not match its labels")
                continue
            if len(ids) < 2 or not np.any(ids != FIXED):
                self.atoms.fix(ids, f"single channel at '{value.name}'")
                continue
            clean[axis] = ids
        if clean:
            self.labels[value] = clean

    def fix_inputs(self, node: ir.Node, reason: str) -> None:
        for value in node.inputs:
            for ids in self.labels_of(value).values():
                self.atoms.fix(ids, reason)

    def new_source(self, node: ir.Node, channels: int) -> np.ndarray | None:
        """Atoms for ``channels`` output channels of weighted ``node`` (fixed when the node is skipped)."""
        if channels < 2:
            return None
        ids = self.atoms.new_source(node.name or node.op_type, node.op_type, channels)
        if node.name in self.skipped:
            self.atoms.fix(ids, self.skipped[node.name])
        return ids

    def cut(self, node: ir.Node, index: int, axis: int, ids: np.ndarray, role: str, zero_safe: bool = True) -> None:
        """Register a cut of constant input ``index`` of ``node`` along ``axis`` (negative axes allowed)."""
        value = node.inputs[index]
        array_shape = self.shape(value)
        axis = axis % len(array_shape)
        if array_shape[axis] != len(ids):
            self.atoms.fix(ids, f"internal: {node.op_type} '{node.name}' input {index} axis {axis} has "
                                f"{array_shape[axis]} positions, not {len(ids)}")
            return
        key = (id(node), index, axis)
        if key in self._cuts:
            self.atoms.union_arrays(self._cuts[key].ids, ids, f"{node.op_type} '{node.name}' input {index}")
            return
        self._cuts[key] = WeightCut(node, index, axis, ids, role, zero_safe)

    def rewrite_int(self, node: ir.Node, index: int, compute: Callable[[Keep], np.ndarray],
                    drop_attribute: str | None = None) -> None:
        self._int_rewrites.append(IntRewrite(node, index, compute, drop_attribute))

    def rewrite_attr(self, node: ir.Node, name: str, compute: Callable[[Keep], int]) -> None:
        self._attr_rewrites.append(AttrRewrite(node, name, compute))

    def require_same_count(self, a: np.ndarray | None, b: np.ndarray | None, reason: str) -> None:
        """After the walk, ``a`` and ``b`` must keep equally many positions; fixed otherwise."""
        self._same_count.append((a, b, reason))

    # ------------------------------------------------------------ shape vectors

    def claim(self, node: ir.Node, index: int) -> None:
        """The rule handled the shape vector at input ``index`` itself."""
        self._claimed.add(index)

    def vec_at(self, node: ir.Node, index: int) -> ShapeVec | None:
        """The tracked shape vector at input ``index`` as this node reads it (a constant becomes
        literals with an origin here; so does a fully static computed vector)."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        value = node.inputs[index]
        if value in self.vecs:
            self.claim(node, index)
            return read_at(self.vecs[value], node, index)
        array = self._small_int_const(value)
        if array is not None:
            return literal_vec(array, node, index)
        return None

    def raw_vec(self, node: ir.Node, index: int) -> ShapeVec | None:
        """The tracked vector at input ``index`` as it is (claimed), or a constant's literals."""
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is not None and value in self.vecs:
            self.claim(node, index)
            return self.vecs[value]
        return self.vec_at(node, index)

    def static_ints(self, node: ir.Node, index: int) -> np.ndarray | None:
        """Values of integer input ``index`` when it is a constant or a static tracked vector whose
        elements do not depend on pruned channels (the rewrite may replace it by a constant)."""
        if index >= len(node.inputs) or node.inputs[index] is None:
            return None
        value = node.inputs[index]
        constant = self.const(value)
        if constant is not None:
            return constant if constant.dtype.kind in "iu" else None
        vec = self.vec_at(node, index)
        if vec is None or not vec.static:
            return None
        values = self.probe.int_value(value)
        return None if values is None else values

    def static_dims(self, value: ir.Value) -> tuple[bool, ...]:
        """Per axis: the same dim whatever the dynamic input dims are (see :mod:`.probe`)."""
        return self.probe.static_axes(value)

    def consume_vec_opaquely(self, vec: ShapeVec, why: str) -> None:
        """A shape vector used in a way the analysis does not model: nothing in it may change."""
        for elem in vec.elems:
            for ids in elem.deps:
                self.atoms.fix(ids, f"the channel count is {why}")
            if elem.origin is not None:
                self.expect_literal(elem.origin, None, elem)

    def expect_literal(self, origin: Origin, ids: np.ndarray | None, elem: Elem) -> None:
        """The element at ``origin`` must equal the kept count of ``ids`` (``None``: its original value)."""
        key = (id(origin.node), origin.index, origin.position)
        entry = self._literal_targets.setdefault(key, (origin, [], []))
        entry[1].append(ids)
        entry[2].append(elem)

    def check_target_dims(self, node: ir.Node, vec: ShapeVec | None, expected: list[np.ndarray | None],
                          input_labels: dict[int, np.ndarray], allow_zero_copy: bool = True,
                          minus_one: bool = True, what: str = "shape") -> None:
        """The shape vector ``vec`` must give, after pruning, dims whose labels are ``expected``
        (``None`` = that dim never changes). Elements with an origin are set to the pruned count;
        dims read from tensors must follow the same channels; anything else fixes the channels
        concerned."""
        reason = f"{node.op_type} '{node.name}' {what} cannot follow the pruned channels"
        if vec is None or len(vec.elems) != len(expected):
            for ids in expected:
                self.atoms.fix(ids, reason)
            for ids in input_labels.values():
                self.atoms.fix(ids, reason)
            if vec is not None:
                self.consume_vec_opaquely(vec, f"a {what} of {node.op_type} '{node.name}'")
            return
        for position, (elem, want) in enumerate(zip(vec.elems, expected)):
            if minus_one and elem.value == -1 and not elem.affected:
                continue
            if allow_zero_copy and elem.value == 0 and not elem.affected:
                self.require_same_count(want, input_labels.get(position), reason)
                continue
            if elem.origin is not None:
                self.expect_literal(elem.origin, want, elem)
            elif elem.direct is not None and len(elem.deps) == 1:
                self.require_same_count(want, elem.direct, reason)
            elif elem.affected:
                self.atoms.fix(want, reason)
                for ids in elem.deps:
                    self.atoms.fix(ids, reason)
            elif want is not None:
                self.atoms.fix(want, reason)

    # ------------------------------------------------------------ after the walk

    def _settle_requirements(self) -> list[LiteralRewrite]:
        """Fix channels until every same-count requirement and literal target is consistent; return
        the literal rewrites that remain.

        Fixing only removes freedom, so the loop ends; a requirement whose two sides differ has
        both sides fixed, after which their counts cannot change."""
        changed = True
        while True:
            while changed:
                changed = False
                changed |= self._settle_once()
            rewrites, changed = self._literal_rewrites()
            if not changed:
                return rewrites

    def _settle_once(self) -> bool:
        changed = False
        for a, b, reason in self._same_count:
            if not self.atoms.same_count(a, b):
                changed |= self._fix_unfixed((a, b), reason)
        for origin, targets, elems in self._literal_targets.values():
            if not any(t is not None for t in targets) or all(
                    self.atoms.same_count(targets[0], t) for t in targets[1:]):
                continue
            wanted = [t for t in targets if t is not None]
            if len(wanted) == len(targets) and len({len(t) for t in wanted}) == 1:
                # one constant serves several dims (CSE merged q/k/v's reshape targets): prune them alike
                for other in wanted[1:]:
                    self.atoms.union_arrays(wanted[0], other, f"constant read by {origin.node.op_type} "
                                                              f"'{origin.node.name}' sets several dims")
                changed = True
                continue
            changed |= self._fix_unfixed([*targets, *(d for e in elems for d in e.deps)],
                                         f"constant read by {origin.node.op_type} '{origin.node.name}' "
                                         "is shared by dims that prune differently")
        return changed

    def _literal_rewrites(self) -> tuple[list[LiteralRewrite], bool]:
        """The literal rewrites the settled labels ask for; ``changed`` when a value was missing and
        channels had to be fixed instead (the requirements are then settled again)."""
        rewrites, changed = [], False
        for origin, targets, elems in self._literal_targets.values():
            wanted = next((t for t in targets if t is not None), None)
            moves = wanted is not None and any(not self.atoms.is_fixed(x) for x in wanted.tolist())
            drifts = any(not self.atoms.is_fixed(x) for e in elems for d in e.deps for x in d.tolist())
            if moves or drifts:
                base = self.probe.int_value(origin.node.inputs[origin.index])
                if base is None:
                    changed |= self._fix_unfixed([*targets, *(d for e in elems for d in e.deps)],
                                                 f"value of {origin.node.op_type} '{origin.node.name}' input unknown")
                    continue
                rewrites.append(LiteralRewrite(origin, wanted if moves else None, np.asarray(base).copy()))
        return rewrites, changed

    def _fix_unfixed(self, arrays, reason: str) -> bool:
        changed = False
        for ids in arrays:
            if ids is not None and any(not self.atoms.is_fixed(x) for x in ids.tolist()):
                self.atoms.fix(ids, reason)
                changed = True
        return changed
