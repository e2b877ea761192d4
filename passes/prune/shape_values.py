"""What each element of a shape vector becomes once channels are pruned.

Exporters compute the ``shape`` input of ``Reshape``/``Expand`` (and ``Slice`` bounds, ``Split``
sizes) in the graph: PyTorch writes ``x.view(b, groups, c // groups, h, w)`` as
``Concat(Unsqueeze(Gather(Shape(x), 0)), [2], Unsqueeze(Div(Gather(Shape(x), 1), 2)), …)``. After
pruning, every element must still give the right number. Each element is tracked symbolically
(:class:`Elem`):

* ``direct`` — the element *is* a dim of a tensor (through ``Shape``): it follows that axis's
  channel labels by itself after pruning;
* ``deps`` — the channel labels its value depends on (through arithmetic, e.g. ``c // 2``);
* ``static`` — its value does not depend on the model's dynamic input dims (batch, sequence):
  a static element can be replaced by a constant without changing the model for other inputs;
* ``origin`` — where a constant holding it can be put: a constant input, or a computed input
  whose elements are all static (the rewrite then replaces that input by a constant).

A consumer that knows which dims it needs (``Reshape``, ``Expand``, ``Slice``, ``Split``,
``Resize``) sets elements with an origin to the pruned count; an element without one must follow
by itself (``direct``) or not change. A consumer the analysis does not model keeps every channel
its elements depend on.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class Origin:
    """Element ``position`` of input ``index`` of ``node`` (a constant, or a static computed vector)."""

    node: ir.Node
    index: int
    position: int


@dataclasses.dataclass(frozen=True, eq=False)
class Elem:
    value: int
    static: bool = True
    deps: tuple[np.ndarray, ...] = ()
    direct: np.ndarray | None = None
    origin: Origin | None = None

    @property
    def affected(self) -> bool:
        """Its value changes when channels it depends on are pruned."""
        return bool(self.deps) or self.direct is not None


@dataclasses.dataclass
class ShapeVec:
    """A tracked integer vector (or scalar, ``scalar=True``) of at most a few elements."""

    elems: list[Elem]
    scalar: bool = False

    @property
    def static(self) -> bool:
        return all(e.static for e in self.elems)


def literal_vec(array: np.ndarray, node: ir.Node, index: int) -> ShapeVec:
    """The elements of a constant integer input ``index`` of ``node``."""
    flat = np.asarray(array).reshape(-1)
    return ShapeVec([Elem(int(v), origin=Origin(node, index, k)) for k, v in enumerate(flat.tolist())],
                    scalar=np.ndim(array) == 0)


def read_at(vec: ShapeVec, node: ir.Node, index: int) -> ShapeVec:
    """``vec`` as read by input ``index`` of ``node``: a fully static vector can be replaced there by a
    constant, so its elements get that origin (and keep what they depend on)."""
    if not vec.static:
        return vec
    return ShapeVec([dataclasses.replace(e, origin=Origin(node, index, k)) for k, e in enumerate(vec.elems)],
                    vec.scalar)


def shape_of(dims: tuple[int, ...], labels: dict[int, np.ndarray], static: tuple[bool, ...],
             start: int | None, end: int | None) -> ShapeVec:
    """``Shape(x)`` (with its optional ``start``/``end`` attributes) for a tensor of ``dims``."""
    axes = list(range(len(dims)))[slice(start, end)]
    elems = []
    for a in axes:
        ids = labels.get(a)
        elems.append(Elem(int(dims[a]), static=static[a], deps=(ids,) if ids is not None else (), direct=ids))
    return ShapeVec(elems)


def combine(value: int, parts: list[Elem]) -> Elem:
    """The result of arithmetic on ``parts``: static when all are, depending on all their channels."""
    deps: list[np.ndarray] = []
    for part in parts:
        deps.extend(part.deps)
    return Elem(int(value), static=all(p.static for p in parts), deps=tuple(deps))
