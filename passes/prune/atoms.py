"""Channel atoms: the unit that structured pruning keeps or removes, and what ties them together.

Every output channel of a weighted layer (Conv/ConvTranspose/Gemm/MatMul with a constant weight)
is one **atom**. The analysis labels each tensor axis that carries such channels with an integer
array ``ids`` (one atom per position along the axis; ``0`` = a position that is never pruned).
Two rules make the labels meaningful:

* **union** — two atoms that must be kept or removed together (the two inputs of a residual
  ``Add``, the query and key of one attention head dimension, …) are merged; the classes of this
  union-find are the channels pruning decides about;
* **fix** — an atom whose removal cannot be proven safe (it reaches a graph output, an op without
  a rule, a skipped layer, …) is marked fixed, with the reason; fixed classes are never removed.

Sources (the weighted layers that create atoms) are tracked in a second union-find: two sources
whose atoms were ever merged belong to one **group**, the unit reported to the user and to which
``amount`` applies.
"""

from __future__ import annotations

import dataclasses

import numpy as np

FIXED = 0
"""The atom id of positions that are never pruned (not produced by a prunable source)."""


@dataclasses.dataclass
class Source:
    """A weighted node whose output channels are atoms."""

    node: str
    op_type: str
    channels: int
    first_atom: int


class ChannelAtoms:
    """Union-find over channel atoms, with fixed flags, reasons and a source-level union-find."""

    def __init__(self) -> None:
        self._parent: list[int] = [FIXED]
        self._source_of: list[int] = [-1]
        self._fixed: dict[int, list[str]] = {}
        """root → reasons; present only for fixed roots."""
        self._approx: dict[int, list[str]] = {}
        """root → why the kept channels' results change (normalisation over the channel axis)."""
        self.sources: list[Source] = []
        self._source_parent: list[int] = []

    # ------------------------------------------------------------ creation

    def new_source(self, node: str, op_type: str, channels: int) -> np.ndarray:
        """``channels`` fresh atoms owned by a new source; returns their ids."""
        first = len(self._parent)
        index = len(self.sources)
        self.sources.append(Source(node, op_type, channels, first))
        self._source_parent.append(index)
        self._parent.extend(range(first, first + channels))
        self._source_of.extend([index] * channels)
        return np.arange(first, first + channels, dtype=np.int64)

    @property
    def count(self) -> int:
        return len(self._parent)

    # ------------------------------------------------------------ union-find

    def find(self, atom: int) -> int:
        parent = self._parent
        root = atom
        while parent[root] != root:
            root = parent[root]
        while parent[atom] != root:  # path compression
            parent[atom], atom = root, parent[atom]
        return root

    def union(self, a: int, b: int, reason: str = "") -> None:
        """Merge the classes of ``a`` and ``b``; with :data:`FIXED` on one side, fix the other."""
        a, b = int(a), int(b)
        if a == FIXED or b == FIXED:
            other = b if a == FIXED else a
            if other != FIXED:
                self.fix_atom(other, reason or "joined with channels that are not pruned")
            return
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if ra > rb:
            ra, rb = rb, ra
        self._parent[rb] = ra
        for table in (self._fixed, self._approx):
            if rb in table:
                merged = table.setdefault(ra, [])
                merged.extend(r for r in table.pop(rb) if r not in merged)
        self._union_sources(self._source_of[ra], self._source_of[rb])

    def union_arrays(self, a: np.ndarray, b: np.ndarray, reason: str = "") -> None:
        """Merge ``a[i]`` with ``b[i]`` for every position ``i`` (same length)."""
        if len(a) != len(b):
            raise ValueError(f"cannot join channel axes of lengths {len(a)} and {len(b)}")
        for x, y in zip(a.tolist(), b.tolist()):
            if x != y:
                self.union(x, y, reason)

    def union_all(self, atoms: np.ndarray, reason: str = "") -> None:
        """Merge every atom of ``atoms`` into one class."""
        flat = atoms.ravel().tolist()
        for other in flat[1:]:
            self.union(flat[0], other, reason)

    # ------------------------------------------------------------ flags

    def fix_atom(self, atom: int, reason: str) -> None:
        if atom == FIXED:
            return
        reasons = self._fixed.setdefault(self.find(atom), [])
        if reason not in reasons and len(reasons) < 8:
            reasons.append(reason)

    def fix(self, atoms: np.ndarray | None, reason: str) -> None:
        """Mark every atom of ``atoms`` as not prunable, for ``reason``."""
        if atoms is None:
            return
        for atom in np.unique(atoms).tolist():
            self.fix_atom(atom, reason)

    def mark_approx(self, atoms: np.ndarray, reason: str) -> None:
        """Removing these channels changes what the kept channels compute (e.g. LayerNorm statistics)."""
        for atom in np.unique(atoms).tolist():
            if atom != FIXED:
                notes = self._approx.setdefault(self.find(atom), [])
                if reason not in notes and len(notes) < 4:
                    notes.append(reason)

    def is_fixed(self, atom: int) -> bool:
        return atom == FIXED or self.find(atom) in self._fixed

    def fixed_reasons(self, atom: int) -> list[str]:
        return list(self._fixed.get(self.find(atom), []))

    def approx_reasons(self, atom: int) -> list[str]:
        return list(self._approx.get(self.find(atom), []))

    def same_count(self, a: np.ndarray | None, b: np.ndarray | None) -> bool:
        """True when the kept positions of ``a`` and ``b`` are equally many for every decision:
        the same classes (fixed ones excepted) occur equally often in both."""
        return self._class_counts(a) == self._class_counts(b)

    def _class_counts(self, atoms: np.ndarray | None) -> dict[int, int]:
        counts: dict[int, int] = {}
        if atoms is None:
            return counts
        for atom in atoms.tolist():
            if not self.is_fixed(atom):
                root = self.find(atom)
                counts[root] = counts.get(root, 0) + 1
        return counts

    # ------------------------------------------------------------ sources

    def _find_source(self, index: int) -> int:
        parent = self._source_parent
        while parent[index] != index:
            parent[index] = parent[parent[index]]
            index = parent[index]
        return index

    def _union_sources(self, a: int, b: int) -> None:
        ra, rb = self._find_source(a), self._find_source(b)
        if ra != rb:
            self._source_parent[max(ra, rb)] = min(ra, rb)

    def source_group(self, source_index: int) -> int:
        return self._find_source(source_index)

    def group_of(self, atom: int) -> int:
        """The group (root source index) an atom belongs to; -1 for :data:`FIXED`."""
        if atom == FIXED:
            return -1
        return self._find_source(self._source_of[atom])

    def roots(self) -> np.ndarray:
        """``roots()[atom]`` = the class root of every atom (after all unions)."""
        return np.array([self.find(a) for a in range(len(self._parent))], dtype=np.int64)
