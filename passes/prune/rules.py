"""Per-op rules of the channel analysis: how channel labels flow through each ONNX op.

A rule reads its inputs' labels (:class:`~graphopt.passes.prune.analysis.ChannelAnalysis`), labels
its outputs, registers the constant cuts / integer rewrites its op needs after pruning, joins
channels that must be removed together and fixes the ones it cannot handle. The rules:

* **weighted layers** (``Conv``, ``ConvTranspose``, ``Gemm``, ``MatMul`` with a constant weight)
  create channels (their output channels) and consume them (their weight's input axis).
  ``Conv`` with ``group == C_in`` (depthwise, channel multiplier ``k``) passes channel ``c`` on to
  outputs ``c·k … c·k+k−1`` and its ``group`` becomes the new channel count; a grouped conv
  (``1 < group < C_in``) keeps the same positions in every group (so ``group`` stays);
* **elementwise** ops (numpy broadcasting) join the channels of their inputs position by position
  (a residual ``Add``, squeeze-excitation's ``Mul``); a constant input with a full channel axis is
  cut along it; a computed input whose channels are not prunable fixes them;
* **per-channel normalisation** (``BatchNormalization``, ``InstanceNormalization``) cuts its
  parameters; ``LayerNormalization`` and reductions over the channel axis (``ReduceMean``, …)
  are allowed but their statistics then run over the kept channels (reported as approximate);
  ``Softmax`` over channels and ``GroupNormalization`` fix them;
* **layout** ops: ``Transpose`` permutes labels; ``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze``
  map them through the dims that merge or split (:func:`reshape_labels`); ``Concat`` along the
  channel axis concatenates labels, ``Split``/``Slice`` along it take sub-ranges and get their
  sizes/starts/ends rewritten; ``Resize``/pooling/``Pad`` pass channels through when they leave
  the channel axis alone;
* **shape vectors** (``Shape → Gather → Concat → Reshape``) are tracked symbolically
  (:mod:`.shape_values`) so that a reshape target that names a channel count is rewritten and
  one computed by arithmetic is refused.

Anything else that reads labelled channels fixes them (:func:`unknown_op`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_ir as ir

from graphopt.passes.prune.analysis import ChannelAnalysis
from graphopt.passes.prune.atoms import FIXED
from graphopt.passes.prune.shape_values import Elem, ShapeVec, combine, shape_of

Rule = Callable[[ChannelAnalysis, ir.Node], None]


def _int(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _ints(node: ir.Node, name: str) -> list[int] | None:
    attr = node.attributes.get(name)
    return list(attr.as_ints()) if attr is not None else None


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _used(value: ir.Value | None) -> bool:
    return value is not None and (bool(value.uses()) or value.is_graph_output())


def _desc(node: ir.Node) -> str:
    return f"{node.op_type} '{node.name}'"


# ---------------------------------------------------------------- fallbacks


def unknown_op(a: ChannelAnalysis, node: ir.Node) -> None:
    """No rule for this op: the channels it reads are left alone."""
    domain = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
    a.fix_inputs(node, f"read by {domain}{node.op_type} '{node.name}', which channel pruning does not model")


def passthrough(a: ChannelAnalysis, node: ir.Node, outputs: tuple[int, ...] = (0,)) -> None:
    """Elementwise on input 0: outputs carry its labels unchanged."""
    labels = a.labels_of(_input(node, 0))
    for index in outputs:
        if index < len(node.outputs) and labels:
            a.set_labels(node.outputs[index], dict(labels))


def broadcast(a: ChannelAnalysis, node: ir.Node, indices: tuple[int, ...] | None = None) -> None:
    """Elementwise with numpy broadcasting over inputs ``indices`` (all by default)."""
    out = node.outputs[0]
    out_shape = a.shape(out)
    indices = tuple(range(len(node.inputs))) if indices is None else indices
    present = [(i, node.inputs[i]) for i in indices if i < len(node.inputs) and node.inputs[i] is not None]
    if out_shape is None:
        a.fix_inputs(node, f"{_desc(node)} output shape unknown")
        return
    rank = len(out_shape)
    labels: dict[int, np.ndarray] = {}
    for p in range(rank):
        aligned = []
        for i, value in present:
            shape = a.shape(value)
            q = p - (rank - len(shape))
            if q >= 0:
                aligned.append((i, value, q, shape[q], a.labels_of(value).get(q)))
        labelled = [entry for entry in aligned if entry[4] is not None]
        if not labelled:
            continue
        full = [entry for entry in labelled if entry[3] == out_shape[p]]
        for entry in labelled:
            if entry[3] != out_shape[p]:
                a.atoms.fix(entry[4], f"{_desc(node)} broadcasts a single channel over them")
        if not full:
            continue
        base = full[0][4]
        for entry in full[1:]:
            a.atoms.union_arrays(base, entry[4], f"joined by {_desc(node)}")
        for i, value, q, dim, ids in aligned:
            if ids is not None or dim != out_shape[p] or dim == 1:
                continue
            if a.const(value) is not None:
                a.cut(node, i, q, base, "param", zero_safe=_zero_safe(node, i))
            else:
                a.atoms.fix(base, f"{_desc(node)} joins them with '{value.name}', whose channels are not pruned")
        labels[p] = base
    a.set_labels(out, labels)


def _zero_safe(node: ir.Node, index: int) -> bool:
    """Whether a zeroed constant at ``index`` leaves a zeroed channel at zero (not a divisor/exponent)."""
    if node.op_type in ("Div", "Pow", "Mod"):
        return index == 0
    return node.op_type in ("Add", "Sub", "Mul", "Sum", "PRelu", "Where")


# ---------------------------------------------------------------- weighted layers


def conv(a: ChannelAnalysis, node: ir.Node) -> None:
    x, w, b = _input(node, 0), _input(node, 1), _input(node, 2)
    labels = a.labels_of(x)
    for axis, ids in labels.items():
        if axis != 1:
            a.atoms.fix(ids, f"{_desc(node)} slides over them (spatial axis)")
    weight = a.const(w)
    x_ids = labels.get(1)
    if weight is None or (b is not None and a.const(b) is None):
        a.atoms.fix(x_ids, f"{_desc(node)} has a computed weight or bias")
        return
    group = _int(node, "group", 1)
    c_in, c_out = int(weight.shape[1]) * group, int(weight.shape[0])
    out_ids = None
    if group == 1:
        if x_ids is not None:
            a.cut(node, 1, 1, x_ids, "in")
        out_ids = a.new_source(node, c_out)
        if out_ids is not None:
            a.cut(node, 1, 0, out_ids, "out")
    elif group == c_in:  # depthwise: output channel o comes from input channel o // multiplier
        if x_ids is None:
            return
        out_ids = np.repeat(x_ids, c_out // c_in)
        a.cut(node, 1, 0, out_ids, "out")
        a.rewrite_attr(node, "group", lambda keep, ids=x_ids: int(keep(ids).sum()))
    else:  # grouped: the same positions are kept in every group, so `group` stays
        per_in, per_out = c_in // group, c_out // group
        if x_ids is not None:
            grid = x_ids.reshape(group, per_in)
            for column in range(per_in):
                a.atoms.union_all(grid[:, column], f"grouped {_desc(node)} keeps the same channels in every group")
            a.cut(node, 1, 1, grid[0], "in")
        atoms = a.new_source(node, per_out) if per_out >= 2 else None
        if atoms is not None:
            out_ids = np.tile(atoms, group)
            a.cut(node, 1, 0, out_ids, "out")
    if out_ids is None:
        return
    if b is not None:
        a.cut(node, 2, 0, out_ids, "out")
    a.set_labels(node.outputs[0], {1: out_ids})


def conv_transpose(a: ChannelAnalysis, node: ir.Node) -> None:
    x, w, b = _input(node, 0), _input(node, 1), _input(node, 2)
    labels = a.labels_of(x)
    weight = a.const(w)
    group = _int(node, "group", 1)
    for axis, ids in labels.items():
        if axis != 1 or weight is None or group != 1:
            a.atoms.fix(ids, f"{_desc(node)} cannot drop these channels (spatial axis, grouped or computed weight)")
    if weight is None or group != 1 or (b is not None and a.const(b) is None):
        return
    if 1 in labels:
        a.cut(node, 1, 0, labels[1], "in")
    out_ids = a.new_source(node, int(weight.shape[1]))
    if out_ids is None:
        return
    a.cut(node, 1, 1, out_ids, "out")
    if b is not None:
        a.cut(node, 2, 0, out_ids, "out")
    a.set_labels(node.outputs[0], {1: out_ids})


def gemm(a: ChannelAnalysis, node: ir.Node) -> None:
    x, w, c = _input(node, 0), _input(node, 1), _input(node, 2)
    trans_a, trans_b = _int(node, "transA", 0), _int(node, "transB", 0)
    weight = a.const(w)
    k_axis = 0 if trans_a else 1
    for axis, ids in a.labels_of(x).items():
        if axis != k_axis or weight is None:
            a.atoms.fix(ids, f"{_desc(node)} cannot drop these rows")
        else:
            a.cut(node, 1, 1 if trans_b else 0, ids, "in")
    for ids in a.labels_of(w).values():
        a.atoms.fix(ids, f"{_desc(node)} reads them as its weight")
    if weight is None:
        return
    n_axis = 0 if trans_b else 1
    bias = a.const(c) if c is not None else None
    if c is not None and bias is None:
        return
    out_ids = a.new_source(node, int(weight.shape[n_axis]))
    if out_ids is None:
        return
    a.cut(node, 1, n_axis, out_ids, "out")
    if bias is not None and bias.ndim >= 1 and bias.shape[-1] == len(out_ids):
        a.cut(node, 2, bias.ndim - 1, out_ids, "out")
    a.set_labels(node.outputs[0], {1: out_ids})


def matmul(a: ChannelAnalysis, node: ir.Node) -> None:
    x, y = _input(node, 0), _input(node, 1)
    sx, sy = a.shape(x), a.shape(y)
    lx, ly = a.labels_of(x), a.labels_of(y)
    cx, cy = a.const(x), a.const(y)
    if sx is None or sy is None or len(sx) < 2 or len(sy) < 2:
        a.fix_inputs(node, f"{_desc(node)} with a 1-D operand")
        return
    rx, ry = len(sx), len(sy)
    rank = max(rx, ry)
    reason = f"contracted by {_desc(node)}"
    kx, ky = lx.get(rx - 1), ly.get(ry - 2)
    if kx is not None and ky is not None:
        a.atoms.union_arrays(kx, ky, reason)
    elif kx is not None:
        if cy is not None:
            a.cut(node, 1, ry - 2, kx, "in")
        else:
            a.atoms.fix(kx, f"{reason} with '{y.name}', whose channels are not pruned")
    elif ky is not None:
        if cx is not None:
            a.cut(node, 0, rx - 1, ky, "in")
        else:
            a.atoms.fix(ky, f"{reason} with '{x.name}', whose channels are not pruned")
    out: dict[int, np.ndarray] = {}
    if rx - 2 in lx:
        out[rank - 2] = lx[rx - 2]
    if ry - 1 in ly:
        out[rank - 1] = ly[ry - 1]
    elif cy is not None and cx is None:
        ids = a.new_source(node, int(sy[-1]))
        if ids is not None:
            a.cut(node, 1, ry - 1, ids, "out")
            out[rank - 1] = ids
    for p in range(rank - 2):  # broadcast batch dims (e.g. attention heads)
        qx, qy = p - (rank - rx), p - (rank - ry)
        ix = lx.get(qx) if qx >= 0 else None
        iy = ly.get(qy) if qy >= 0 else None
        dx = sx[qx] if qx >= 0 else 1
        dy = sy[qy] if qy >= 0 else 1
        if ix is not None and iy is not None:
            a.atoms.union_arrays(ix, iy, f"batched {_desc(node)}")
            out[p] = ix
        elif ix is not None or iy is not None:
            ids, other_dim = (ix, dy) if ix is not None else (iy, dx)
            if other_dim == 1:
                out[p] = ids
            else:
                a.atoms.fix(ids, f"batched {_desc(node)} pairs them with unpruned channels")
    a.set_labels(node.outputs[0], out)


# ---------------------------------------------------------------- normalisation


def batch_norm(a: ChannelAnalysis, node: ir.Node) -> None:
    labels = a.labels_of(_input(node, 0))
    extra_used = any(_used(v) for v in node.outputs[1:])
    if 1 in labels:
        if extra_used or any(a.const(_input(node, i)) is None for i in range(1, 5)):
            a.atoms.fix(labels[1], f"{_desc(node)} in training mode or with computed statistics")
        else:
            for i in range(1, 5):
                a.cut(node, i, 0, labels[1], "param", zero_safe=i in (1, 2))
    a.set_labels(node.outputs[0], dict(labels))


def instance_norm(a: ChannelAnalysis, node: ir.Node) -> None:
    labels = a.labels_of(_input(node, 0))
    for axis, ids in labels.items():
        if axis != 1:
            a.atoms.fix(ids, f"normalised over by {_desc(node)}")
        elif any(a.const(_input(node, i)) is None for i in (1, 2)):
            a.atoms.fix(ids, f"{_desc(node)} has computed parameters")
        else:
            for i in (1, 2):
                a.cut(node, i, 0, ids, "param")
    a.set_labels(node.outputs[0], {k: v for k, v in labels.items() if k == 1})


def layer_norm(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    rank = len(a.shape(x))
    axis = _int(node, "axis", -1) % rank
    if any(_used(v) for v in node.outputs[1:]):
        a.fix_inputs(node, f"{_desc(node)} mean/inv-std outputs are used")
        return
    for p, ids in labels.items():
        if p < axis:
            continue
        a.atoms.mark_approx(ids, f"{_desc(node)} normalises over the kept channels only")
        for i in (1, 2):
            param = _input(node, i)
            if param is None:
                continue
            shape = a.shape(param)
            q = p - (rank - len(shape))
            if q < 0 or shape[q] == 1:
                continue
            if a.const(param) is None:
                a.atoms.fix(ids, f"{_desc(node)} has computed parameters")
            else:
                a.cut(node, i, q, ids, "param")
    a.set_labels(node.outputs[0], dict(labels))


def reduce(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    rank = len(a.shape(x))
    axes = _ints(node, "axes")
    if axes is None and _input(node, 1) is not None:
        a.claim(node, 1)
        constant = a.const(_input(node, 1))
        if constant is None:
            a.fix_inputs(node, f"{_desc(node)} reduces over computed axes")
            return
        axes = [int(v) for v in constant.reshape(-1)]
    if not axes:
        axes = [] if _int(node, "noop_with_empty_axes", 0) else list(range(rank))
    reduced = {ax % rank for ax in axes}
    keep = _int(node, "keepdims", 1)
    out = {}
    for p, ids in labels.items():
        if p in reduced:
            a.atoms.mark_approx(ids, f"{_desc(node)} reduces over the kept channels only")
            continue
        out[p if keep else p - sum(1 for r in reduced if r < p)] = ids
    a.set_labels(node.outputs[0], out)


def over_axis(a: ChannelAnalysis, node: ir.Node, default_axis: int, keep_axis: bool = True) -> None:
    """Softmax-like ops (and ArgMax): channels on their axis are fixed, the rest pass through."""
    x = _input(node, 0)
    labels = a.labels_of(x)
    rank = len(a.shape(x))
    axis = _int(node, "axis", default_axis) % rank
    drops = not keep_axis and not _int(node, "keepdims", 1)
    out = {}
    for p, ids in labels.items():
        if p == axis:
            a.atoms.fix(ids, f"{_desc(node)} works across them")
        else:
            out[p - 1 if drops and p > axis else p] = ids
    a.set_labels(node.outputs[0], out)


def lp_norm(a: ChannelAnalysis, node: ir.Node) -> None:
    """LpNormalization: over its axis the norm then runs over the kept channels only."""
    x = _input(node, 0)
    labels = a.labels_of(x)
    axis = _int(node, "axis", -1) % len(a.shape(x))
    if axis in labels:
        a.atoms.mark_approx(labels[axis], f"{_desc(node)} normalises over the kept channels only")
    a.set_labels(node.outputs[0], dict(labels))


def spatial(a: ChannelAnalysis, node: ir.Node) -> None:
    """Pooling and other ops over axes ≥ 2: channels on axis 1 pass, others are fixed."""
    labels = a.labels_of(_input(node, 0))
    for p, ids in labels.items():
        if p != 1:
            a.atoms.fix(ids, f"{_desc(node)} works across them")
    if any(_used(v) for v in node.outputs[1:]):
        a.fix_inputs(node, f"{_desc(node)} second output (indices) is used")
    a.set_labels(node.outputs[0], {p: ids for p, ids in labels.items() if p == 1})


def group_norm(a: ChannelAnalysis, node: ir.Node) -> None:
    a.fix_inputs(node, f"{_desc(node)} normalises groups of channels together")


# ---------------------------------------------------------------- layout


def transpose(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    perm = _ints(node, "perm") or list(reversed(range(len(a.shape(x)))))
    a.set_labels(node.outputs[0], {out_axis: labels[in_axis] for out_axis, in_axis in enumerate(perm) if in_axis in labels})


def chunk_axes(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Split a reshape into the smallest runs of source and target axes with equal products."""
    chunks = []
    i = j = 0
    while i < len(src) or j < len(dst):
        left: list[int] = []
        right: list[int] = []
        p = q = 1
        if i < len(src):
            p *= src[i]
            left.append(i)
            i += 1
        if j < len(dst):
            q *= dst[j]
            right.append(j)
            j += 1
        while p != q:
            if p < q and i < len(src):
                p *= src[i]
                left.append(i)
                i += 1
            elif q < p and j < len(dst):
                q *= dst[j]
                right.append(j)
                j += 1
            else:
                return None
        chunks.append((left, right))
    return chunks


def reshape_labels(a: ChannelAnalysis, node: ir.Node, src: tuple[int, ...], dst: tuple[int, ...],
                   labels: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Labels of a reshape's output.

    Within a run of merged axes, a labelled axis repeats each channel over the axes after it and
    tiles over the ones before it (``Flatten`` before a ``Gemm``: channel ``c`` covers features
    ``c·H·W … (c+1)·H·W−1``). When a labelled axis is split (``C → heads × head_dim``, or a
    channel shuffle's ``C → g × C/g``), the output axis along which the labels vary carries them;
    when none does, the channels are joined across the other axes so that every head (group)
    keeps the same positions, and the innermost non-unit axis carries them. Either way the
    removed positions form the same set before and after the reshape, so the pruned tensors
    reshape into each other."""
    chunks = chunk_axes(src, dst)
    if chunks is None:
        for ids in labels.values():
            a.atoms.fix(ids, f"{_desc(node)} reshapes them in a way the analysis does not follow")
        return {}
    out: dict[int, np.ndarray] = {}
    for left, right in chunks:
        inside = [ax for ax in left if ax in labels]
        if not inside:
            continue
        if len(inside) > 1 or not right:
            for ax in inside:
                a.atoms.fix(labels[ax], f"{_desc(node)} merges two labelled axes")
            continue
        axis = inside[0]
        dims = [src[ax] for ax in left]
        grid = np.broadcast_to(labels[axis].reshape([-1 if ax == axis else 1 for ax in left]), dims)
        grid = grid.reshape([dst[ax] for ax in right])
        out_axis = _single_varying_axis(a, grid)
        if out_axis is None:
            candidates = [k for k, d in enumerate(grid.shape) if d > 1]
            out_axis = candidates[-1]
            rows = np.moveaxis(grid, out_axis, -1).reshape(-1, grid.shape[out_axis])
            for column in range(rows.shape[1]):
                a.atoms.union_all(rows[:, column], f"{_desc(node)} splits them into equal parts (heads/groups) "
                                                   "that keep the same positions")
        out[right[out_axis]] = np.moveaxis(grid, out_axis, -1).reshape(-1, grid.shape[out_axis])[0].copy()
    return out


def _single_varying_axis(a: ChannelAnalysis, grid: np.ndarray) -> int | None:
    roots = np.vectorize(a.atoms.find, otypes=[np.int64])(grid) if grid.size else grid
    for k, d in enumerate(grid.shape):
        if d < 2:
            continue
        rows = np.moveaxis(roots, k, -1).reshape(-1, d)
        if (rows == rows[0]).all():
            return k
    return None


def reshape(a: ChannelAnalysis, node: ir.Node) -> None:
    x, out = _input(node, 0), node.outputs[0]
    labels = a.labels_of(x)
    vec = a.vec_at(node, 1)
    if not labels and (vec is None or not any(e.affected for e in vec.elems)):
        if vec is not None:
            a.check_target_dims(node, vec, [None] * len(vec.elems), {}, allow_zero_copy=not _int(node, "allowzero", 0))
        return
    src, dst = a.shape(x), a.shape(out)
    new = reshape_labels(a, node, src, dst, labels)
    a.check_target_dims(node, vec, [new.get(p) for p in range(len(dst))], labels,
                        allow_zero_copy=not _int(node, "allowzero", 0))
    a.set_labels(out, new)


def flatten(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    if labels:
        a.set_labels(node.outputs[0], reshape_labels(a, node, a.shape(x), a.shape(node.outputs[0]), labels))


def squeeze_like(a: ChannelAnalysis, node: ir.Node) -> None:
    """Squeeze/Unsqueeze: a reshape that only adds or removes unit axes."""
    x = _input(node, 0)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        a.claim(node, 1)
    labels = a.labels_of(x)
    if labels:
        a.set_labels(node.outputs[0], reshape_labels(a, node, a.shape(x), a.shape(node.outputs[0]), labels))


def expand(a: ChannelAnalysis, node: ir.Node) -> None:
    x, out = _input(node, 0), node.outputs[0]
    labels = a.labels_of(x)
    vec = a.vec_at(node, 1)
    sx, so = a.shape(x), a.shape(out)
    rank = len(so)
    if vec is None or len(vec.elems) != rank:
        a.fix_inputs(node, f"{_desc(node)} target shape cannot be followed")
        if vec is not None:
            a.consume_vec_opaquely(vec, f"a shape of {_desc(node)}")
        return
    new: dict[int, np.ndarray] = {}
    for p, elem in enumerate(vec.elems):
        q = p - (rank - len(sx))
        ids = labels.get(q) if q >= 0 else None
        if ids is not None:
            new[p] = ids
            if elem.value == 1 and not elem.affected:
                continue  # 1 keeps the input's (pruned) dim
            a.check_target_dims(node, ShapeVec([elem]), [ids], {}, allow_zero_copy=False, minus_one=False)
        elif elem.direct is not None and (q < 0 or sx[q] == 1):
            new[p] = elem.direct  # a broadcast axis grows to the pruned channel count
        else:
            a.check_target_dims(node, ShapeVec([elem]), [None], {}, allow_zero_copy=False, minus_one=False)
    a.set_labels(out, new)


def concat(a: ChannelAnalysis, node: ir.Node) -> None:
    out = node.outputs[0]
    rank = len(a.shape(out))
    axis = _int(node, "axis", 0) % rank
    inputs = [(i, v) for i, v in enumerate(node.inputs) if v is not None]
    labels: dict[int, np.ndarray] = {}
    along = [a.labels_of(v).get(axis) for _, v in inputs]
    if any(ids is not None for ids in along):
        parts = [ids if ids is not None else np.full(a.shape(v)[axis], FIXED, dtype=np.int64)
                 for ids, (_, v) in zip(along, inputs)]
        labels[axis] = np.concatenate(parts)
    for p in range(rank):
        if p == axis:
            continue
        labelled = [a.labels_of(v).get(p) for _, v in inputs]
        present = [ids for ids in labelled if ids is not None]
        if not present:
            continue
        base = present[0]
        for ids in present[1:]:
            a.atoms.union_arrays(base, ids, f"concatenated by {_desc(node)} along another axis")
        for (i, v), ids in zip(inputs, labelled):
            if ids is None:
                if a.const(v) is not None:
                    a.cut(node, i, p, base, "param")
                else:
                    a.atoms.fix(base, f"{_desc(node)} joins them with '{v.name}', whose channels are not pruned")
        labels[p] = base
    a.set_labels(out, labels)


def split(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    rank = len(a.shape(x))
    axis = _int(node, "axis", 0) % rank
    sizes = [a.shape(v)[axis] for v in node.outputs]
    if _input(node, 1) is not None:
        a.claim(node, 1)
    for index, v in enumerate(node.outputs):
        out = {p: ids for p, ids in labels.items() if p != axis}
        if axis in labels:
            start = sum(sizes[:index])
            out[axis] = labels[axis][start:start + sizes[index]]
        a.set_labels(v, out)
    if axis in labels:
        ids = labels[axis]
        bounds = np.cumsum([0, *sizes])
        parts = [ids[bounds[k]:bounds[k + 1]] for k in range(len(sizes))]
        if "split" in node.attributes:
            a.atoms.fix(ids, f"{_desc(node)} has split sizes as an attribute (opset < 13)")
            return
        if _input(node, 1) is not None and a.static_ints(node, 1) is None:
            a.atoms.fix(ids, f"{_desc(node)} has computed split sizes")
            return

        def new_sizes(keep, parts=parts):
            return np.array([int(keep(part).sum()) for part in parts], dtype=np.int64)

        a.rewrite_int(node, 1, new_sizes, drop_attribute="num_outputs")


def slice_(a: ChannelAnalysis, node: ir.Node) -> None:
    x = _input(node, 0)
    labels = a.labels_of(x)
    shape = a.shape(x)
    rank = len(shape)
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None:
            a.claim(node, i)
    if not labels:
        return
    consts = [a.static_ints(node, i) for i in range(1, 5)]
    starts, ends, axes, steps = consts
    if starts is None or ends is None or (_input(node, 3) is not None and axes is None) or (
            _input(node, 4) is not None and steps is None):
        a.fix_inputs(node, f"{_desc(node)} has bounds computed from dynamic dims")
        return
    axes = [int(v) % rank for v in (axes if axes is not None else range(len(starts)))]
    steps = [int(v) for v in (steps if steps is not None else [1] * len(starts))]
    out = dict(labels)
    changes: dict[int, tuple[int, np.ndarray, np.ndarray]] = {}
    for k, axis in enumerate(axes):
        if axis not in labels:
            continue
        ids = labels[axis]
        if steps[k] != 1:
            a.atoms.fix(ids, f"{_desc(node)} takes every {steps[k]}th channel")
            out.pop(axis)
            continue
        start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(shape[axis])
        out[axis] = ids[start:max(start, stop)]
        changes[k] = (axis, ids[:start], ids[start:max(start, stop)])
    a.set_labels(node.outputs[0], out)
    if not changes:
        return

    def new_starts(keep, changes=changes, base=starts):
        array = base.copy()
        for k, (_, before, _inside) in changes.items():
            array[k] = int(keep(before).sum())
        return array

    def new_ends(keep, changes=changes, base=ends):
        array = base.copy()
        for k, (_, before, inside) in changes.items():
            array[k] = int(keep(before).sum()) + int(keep(inside).sum())
        return array

    a.rewrite_int(node, 1, new_starts)
    a.rewrite_int(node, 2, new_ends)


def gather(a: ChannelAnalysis, node: ir.Node) -> None:
    data, indices = _input(node, 0), _input(node, 1)
    labels = a.labels_of(data)
    rank = len(a.shape(data))
    axis = _int(node, "axis", 0) % rank
    extra = len(a.shape(indices)) - 1
    out = {}
    for p, ids in labels.items():
        if p == axis:
            a.atoms.fix(ids, f"{_desc(node)} picks among them")
        else:
            out[p if p < axis else p + extra] = ids
    a.set_labels(node.outputs[0], out)


def pad(a: ChannelAnalysis, node: ir.Node) -> None:
    labels = a.labels_of(_input(node, 0))
    rank = len(a.shape(_input(node, 0)))
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None:
            a.claim(node, i)
    pads = a.const(_input(node, 1)) if _input(node, 1) is not None else np.array(_ints(node, "pads") or [])
    axes_value = _input(node, 3)
    axes = list(range(rank)) if axes_value is None else (
        None if a.const(axes_value) is None else [int(v) % rank for v in a.const(axes_value)])
    if pads is None or axes is None:
        a.fix_inputs(node, f"{_desc(node)} has computed pads")
        return
    padded = {ax for k, ax in enumerate(axes) if pads[k] != 0 or pads[k + len(axes)] != 0}
    out = {}
    for p, ids in labels.items():
        if p in padded:
            a.atoms.fix(ids, f"{_desc(node)} pads along them")
        else:
            out[p] = ids
    a.set_labels(node.outputs[0], out)


def resize(a: ChannelAnalysis, node: ir.Node) -> None:
    x, out = _input(node, 0), node.outputs[0]
    labels = a.labels_of(x)
    sx, so = a.shape(x), a.shape(out)
    new = {}
    for p, ids in labels.items():
        if sx[p] == so[p]:
            new[p] = ids
        else:
            a.atoms.fix(ids, f"{_desc(node)} resizes along them")
    for i in (1, 2):
        if _input(node, i) is not None:
            a.claim(node, i)
    sizes = _input(node, 3)
    if sizes is not None and a.shape(sizes) not in ((0,), None):
        vec = a.vec_at(node, 3)
        axes = _ints(node, "axes")
        expected = [new.get(ax % len(sx)) for ax in axes] if axes else [new.get(p) for p in range(len(so))]
        a.check_target_dims(node, vec, expected, {}, allow_zero_copy=False, minus_one=False, what="sizes")
    a.set_labels(out, new)


def shape_op(a: ChannelAnalysis, node: ir.Node) -> bool:
    x = _input(node, 0)
    dims = a.shape(x)
    if dims is None:
        return False
    start = node.attributes.get("start")
    end = node.attributes.get("end")
    a.vecs[node.outputs[0]] = shape_of(dims, a.labels_of(x), a.static_dims(x), start.as_int() if start else None,
                                       end.as_int() if end else None)
    return True


def size_op(a: ChannelAnalysis, node: ir.Node) -> None:
    a.fix_inputs(node, f"their count is read by {_desc(node)}")


# ---------------------------------------------------------------- shape-vector ops


def _vecs(a: ChannelAnalysis, node: ir.Node) -> list[ShapeVec | None]:
    return [a.vec_at(node, i) for i in range(len(node.inputs))]


def vec_gather(a: ChannelAnalysis, node: ir.Node) -> bool:
    data, indices = _vecs(a, node)[:2]
    index_array = a.const(_input(node, 1))
    if data is None or index_array is None or _int(node, "axis", 0) != 0 or index_array.ndim > 1:
        return False
    picked = [data.elems[int(i)] for i in index_array.reshape(-1)]
    a.vecs[node.outputs[0]] = ShapeVec(picked, scalar=index_array.ndim == 0)
    return True


def vec_concat(a: ChannelAnalysis, node: ir.Node) -> bool:
    parts = _vecs(a, node)
    if any(p is None for p in parts):
        return False
    a.vecs[node.outputs[0]] = ShapeVec([e for p in parts for e in p.elems])
    return True


def vec_same(a: ChannelAnalysis, node: ir.Node) -> bool:
    """Unsqueeze/Squeeze/Cast/Identity/Reshape of a shape vector: same elements."""
    data = a.vec_at(node, 0)
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None:
            a.claim(node, i)
    if data is None:
        return False
    out_shape = a.shape(node.outputs[0])
    a.vecs[node.outputs[0]] = ShapeVec(list(data.elems), scalar=out_shape == ())
    return True


def vec_slice(a: ChannelAnalysis, node: ir.Node) -> bool:
    data = a.vec_at(node, 0)
    consts = [a.const(_input(node, i)) if _input(node, i) is not None else None for i in range(1, 5)]
    for i in range(1, len(node.inputs)):
        if node.inputs[i] is not None:
            a.claim(node, i)
    starts, ends, _axes, steps = consts
    if data is None or starts is None or ends is None or len(starts) != 1:
        return False
    step = int(steps[0]) if steps is not None else 1
    a.vecs[node.outputs[0]] = ShapeVec(data.elems[slice(int(starts[0]), int(ends[0]), step)])
    return True


def vec_arithmetic(a: ChannelAnalysis, node: ir.Node) -> bool:
    """Arithmetic on shape values (``c // groups``): each result element depends on every input
    element; it stays a plain value that a reshape may replace by its pruned count when static."""
    parts = [a.raw_vec(node, i) for i in range(len(node.inputs))]
    parts = [p for p in parts if p is not None]
    values = a.probe.int_value(node.outputs[0])
    if values is None:
        for part in parts:
            a.consume_vec_opaquely(part, f"used in arithmetic by {_desc(node)}")
        return False
    elems = [e for part in parts for e in part.elems]
    if all(e.static for e in elems):
        result = [combine(int(v), elems) for v in values.reshape(-1)]
    else:  # depends on dynamic dims too: can never become a constant, so what it reads must not change
        for elem in elems:
            for ids in elem.deps:
                a.atoms.fix(ids, f"the channel count is used with dynamic dims in arithmetic by {_desc(node)}")
        result = [Elem(int(v), static=False) for v in values.reshape(-1)]
    a.vecs[node.outputs[0]] = ShapeVec(result, scalar=values.ndim == 0)
    return True


RULES: dict[str, Rule] = {
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm,
    "Transpose": transpose,
    "Reshape": reshape,
    "Flatten": flatten,
    "Squeeze": squeeze_like,
    "Unsqueeze": squeeze_like,
    "Expand": expand,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Gather": gather,
    "Pad": pad,
    "Resize": resize,
    "Size": size_op,
    "Softmax": lambda a, n: over_axis(a, n, -1),
    "LogSoftmax": lambda a, n: over_axis(a, n, -1),
    "Hardmax": lambda a, n: over_axis(a, n, -1),
    "ArgMax": lambda a, n: over_axis(a, n, 0, keep_axis=False),
    "ArgMin": lambda a, n: over_axis(a, n, 0, keep_axis=False),
    "LpNormalization": lp_norm,
    "Upsample": resize,
}

UNARY = ("Relu", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Gelu", "Erf", "Exp", "Log", "Sqrt",
         "Neg", "Abs", "Identity", "Cast", "CastLike", "Softplus", "Softsign", "Mish", "Elu", "Selu", "Celu",
         "ThresholdedRelu", "Floor", "Ceil", "Round", "Reciprocal", "Sin", "Cos", "Sign", "IsNaN", "IsInf", "Not",
         "Shrink", "Swish", "Dropout")
BINARY = ("Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "PRelu", "Equal", "Less", "LessOrEqual",
          "Greater", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "Where", "Clip", "BitShift")
REDUCE = ("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
          "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")
SPATIAL = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")

for _op in UNARY:
    RULES[_op] = (lambda a, n: passthrough(a, n, (0, 1))) if _op == "Dropout" else passthrough
for _op in BINARY:
    RULES[_op] = broadcast
for _op in REDUCE:
    RULES[_op] = reduce
for _op in SPATIAL:
    RULES[_op] = spatial

VEC_RULES: dict[str, Callable[[ChannelAnalysis, ir.Node], bool]] = {
    "Shape": shape_op,
    "Gather": vec_gather,
    "Concat": vec_concat,
    "Unsqueeze": vec_same,
    "Squeeze": vec_same,
    "Cast": vec_same,
    "Identity": vec_same,
    "Reshape": vec_same,
    "Slice": vec_slice,
    **{op: vec_arithmetic for op in ("Add", "Sub", "Mul", "Div", "Mod", "Max", "Min", "Neg", "Abs", "Equal",
                                     "Less", "Greater", "Where", "ReduceProd", "Sqrt", "Range")},
}
