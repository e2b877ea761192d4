"""What each element of a shape vector becomes once channels are pruned.

Exporters compute the ``shape`` input of ``Reshape``/``Expand`` in the graph: PyTorch writes
``x.view(x.size(0), x.size(1), 4, 64)`` as ``Concat(Unsqueeze(Gather(Shape(x), 0)), …, [4], [64])``.
After pruning, every element of such a vector must still give the right dim. Each element is
tracked symbolically:

* :class:`DimElem` — a dimension of some tensor (through ``Shape``): it follows that tensor after
  pruning; ``ids`` are the channel labels of that axis (``None`` when the axis is never pruned);
* :class:`LitElem` — a literal from a constant; ``origin`` says which constant input of which node
  holds it, so the rewrite can put the new channel count there;
* :class:`OtherElem` — computed by arithmetic; its value must not change.

A shape vector is a list of elements; ``Gather``/``Slice``/``Concat``/``Unsqueeze``/``Squeeze``/
``Cast``/``Identity`` move elements around, arithmetic turns them into :class:`OtherElem` (and the
analysis refuses to prune any channel count that arithmetic reads).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass(frozen=True)
class Origin:
    """Where a literal lives: element ``position`` of the constant read as input ``index`` of ``node``."""

    node: ir.Node
    index: int
    position: int


@dataclasses.dataclass(frozen=True, eq=False)
class DimElem:
    value: int
    ids: np.ndarray | None
    """Channel labels of the axis the dim was read from; ``None`` when that axis is never pruned."""


@dataclasses.dataclass(frozen=True, eq=False)
class LitElem:
    value: int
    origin: Origin | None


@dataclasses.dataclass(frozen=True, eq=False)
class OtherElem:
    value: int


Elem = DimElem | LitElem | OtherElem


@dataclasses.dataclass
class ShapeVec:
    """A tracked integer vector (or scalar, ``scalar=True``) of at most a few elements."""

    elems: list[Elem]
    scalar: bool = False

    def affected(self) -> list[np.ndarray]:
        """Channel labels of every element whose value follows pruned channels."""
        return [e.ids for e in self.elems if isinstance(e, DimElem) and e.ids is not None]

    def literals(self) -> list[LitElem]:
        return [e for e in self.elems if isinstance(e, LitElem) and e.origin is not None]


def literal_vec(array: np.ndarray, node: ir.Node, index: int) -> ShapeVec:
    """The elements of a constant integer input ``index`` of ``node``."""
    flat = np.asarray(array).reshape(-1)
    return ShapeVec([LitElem(int(v), Origin(node, index, k)) for k, v in enumerate(flat.tolist())],
                    scalar=np.ndim(array) == 0)


def shape_of(dims: tuple[int, ...], labels: dict[int, np.ndarray], start: int | None, end: int | None) -> ShapeVec:
    """``Shape(x)`` (with its optional ``start``/``end`` attributes) for a tensor of ``dims``."""
    rank = len(dims)
    axes = list(range(rank))[slice(start, end)]
    return ShapeVec([DimElem(int(dims[a]), labels.get(a)) for a in axes])
