"""``graphopt inspect``: what a model is made of, before anything is changed.

:func:`inspect_model` returns a JSON-serialisable dict; :func:`render_inspection` prints it as
compact tables. Nothing here modifies the model (shape inference runs on a clone that shares the
weights).

MACs (multiply-accumulates) are counted at the shapes onnx shape inference finds (onnxruntime's
symbolic shape inference fills what it leaves open), after any ``--shape`` overrides have fixed the
symbolic input dimensions. Without ``--shape``, a model whose only unknown input dims are a batch axis
(a symbolic leading dim shared by every input, :func:`graphopt.data.batch_axis` — how exporters write
``dynamic_axes={"input": {0: "N"}}``) is counted **per sample**: the batch axis is set to 1 on the
inference copy and the report says so (``macs.per_sample``). Any other unknown dim (a sequence length,
an image size) leaves the nodes that depend on it *unknown*, with a ``--shape`` hint. Every node of
the ops below counts, whatever its operands are — weights or activations (attention's ``Q·Kᵀ`` and
``softmax·V`` MatMuls included):

* ``Conv`` / ``QLinearConv`` / ``ConvInteger``: ``N·Cout·Hout·Wout·(Cin/group)·kH·kW``,
  i.e. ``prod(Y.shape) · prod(W.shape[1:])`` for any number of spatial dims;
* ``ConvTranspose``: every input element is scattered through a ``(Cout/group)·kH·kW`` kernel:
  ``N·Cin·Hin·Win·(Cout/group)·kH·kW = prod(X.shape) · prod(W.shape[1:])``;
* ``MatMul`` / ``QLinearMatMul`` / ``MatMulInteger``: ``batch·M·K·N`` with numpy broadcasting of
  the batch dims (a 1-D operand contributes M = 1 or N = 1);
* ``Gemm``: ``M·K·N`` (after ``transA`` / ``transB``); the bias add is not counted.

A node whose operand shapes are not all static after inference is counted as *unknown* (its MACs
are not guessed). Nodes inside subgraphs (``If`` branches, ``Loop``/``Scan`` bodies) are counted
once each: both branches of an ``If`` are added and a loop body is not multiplied by its trip
count; ``macs.in_subgraphs`` says how much of the total comes from them.

Sparsity is the fraction of stored values that are exactly zero, over *weights*: float or
small-integer initializers (and ``Constant`` tensors) with at least two dimensions. A weight
follows the **2:4 pattern** when, split into groups of 4 consecutive values along its
reduction (input-channel) axis, every group has at least 2 zeros (the rule and the axis are in
:mod:`graphopt.sparsity`, shared with the prune pass).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.errors import InputError
from graphopt.model_io import load_model
from graphopt.scratch import scratch_cwd
from graphopt.sparsity import follows_n_m, reduction_axis

DEFAULT_DOMAINS = ("", "ai.onnx")

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger")

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
DYNAMIC_QUANT_OPS = {"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"}
"""Ops that mark a model as already quantized; plus any ``QLinear*``/``*Integer``/``Q*`` contrib op."""
QUANT_CONTRIB_OPS = {"QGemm", "QAttention", "QEmbedLayerNormalization", "MatMulNBits", "MatMulInteger16",
                     "QOrderedMatMul", "QOrderedAttention", "MatMulBnb4", "GatherBlockQuantized"}

LOW_BIT_INT = {ir.DataType.INT8, ir.DataType.UINT8, ir.DataType.INT4, ir.DataType.UINT4,
               ir.DataType.INT2, ir.DataType.UINT2}
HALF_FLOATS = {ir.DataType.FLOAT16: "fp16", ir.DataType.BFLOAT16: "bf16"}

_SHAPE_RE = re.compile(r"^\s*(?P<name>.+?)\s*=\s*(?P<dims>\d+(?:\s*[x,]\s*\d+)*)\s*$")


# ---------------------------------------------------------------- shape overrides


def parse_shape_overrides(shapes: Iterable[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse ``NAME=1x3x224x224`` strings (``,`` also separates dims) into ``{name: dims}``.

    Raises :class:`InputError` with one line for a malformed string, a zero dim or a repeated name.
    """
    overrides: dict[str, tuple[int, ...]] = {}
    for text in shapes or ():
        match = _SHAPE_RE.match(text)
        if match is None:
            raise InputError(f"--shape expects NAME=1x3x224x224, got {text!r}")
        name = match.group("name")
        dims = tuple(int(d) for d in re.split(r"\s*[x,]\s*", match.group("dims").strip()))
        if any(d <= 0 for d in dims):
            raise InputError(f"--shape expects positive dims like NAME=1x3x224x224, got {text!r}")
        if name in overrides:
            raise InputError(f"--shape given twice for input {name!r}")
        overrides[name] = dims
    return overrides


def _apply_overrides(model: ir.Model, overrides: dict[str, tuple[int, ...]]) -> None:
    """Fix input shapes on ``model`` (a clone). Checks names, ranks and already-static dims."""
    inputs = {v.name: v for v in _graph_inputs(model)}
    for name, dims in overrides.items():
        if name not in inputs:
            valid = ", ".join(inputs) or "(none)"
            raise InputError(f"--shape names input {name!r}, but the model's inputs are: {valid}")
        value = inputs[name]
        declared = value.shape
        if declared is not None:
            if declared.rank() != len(dims):
                raise InputError(
                    f"--shape {name}={_fmt_dims(dims)} has rank {len(dims)} but input {name!r} has "
                    f"rank {declared.rank()} {_fmt_shape(_shape_json(declared))}")
            for i, (want, have) in enumerate(zip(dims, declared.dims)):
                if isinstance(have, int) and have != want:
                    raise InputError(
                        f"--shape {name}={_fmt_dims(dims)} sets dim {i} to {want} but input {name!r} "
                        f"fixes it at {have} {_fmt_shape(_shape_json(declared))}")
        value.shape = ir.Shape(list(dims))


# ---------------------------------------------------------------- the report


def inspect_model(model: str | os.PathLike | onnx.ModelProto | ir.Model,
                  shape_overrides: dict[str, tuple[int, ...]] | None = None) -> dict[str, Any]:
    """Describe ``model``: I/O, opsets, op histogram, parameters, sparsity, MACs and precision.

    ``shape_overrides`` (``{input_name: dims}``, see :func:`parse_shape_overrides`) fixes symbolic
    input dims before shape inference so MACs can be counted. The model is not modified.
    Returns a JSON-serialisable dict; the MAC formulas are in this module's docstring.
    """
    from graphopt.console import WarningLog, captured_warnings

    path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    loaded = load_model(model)
    notes: list[str] = []

    inferred = loaded.clone()
    _apply_overrides(inferred, dict(shape_overrides or {}))
    per_sample = None if shape_overrides else _one_sample(inferred)
    log = WarningLog()
    with captured_warnings(log):
        shape_inference_ok = _infer_shapes(inferred)
        if _has_unknown_mac_nodes(inferred):
            resolved = _symbolic_infer(inferred)
            if resolved:
                notes.append(f"onnxruntime symbolic shape inference resolved {resolved} more tensor shapes")
    if not shape_inference_ok:
        notes.append("onnx shape inference failed; MACs use the shapes declared in the model")
    notes.extend(line for line in log.lines() if "Shape inference failed" not in line)

    weights = _weights(loaded)
    histogram = op_histogram(loaded)
    info: dict[str, Any] = {
        "model": str(path) if path is not None else None,
        "file_bytes": _file_bytes(path),
        "graph_name": loaded.graph.name,
        "ir_version": int(loaded.ir_version),
        "producer": " ".join(p for p in (loaded.producer_name, loaded.producer_version) if p) or None,
        "opsets": {(domain or "ai.onnx"): int(version) for domain, version in sorted(loaded.opset_imports.items())},
        "inputs": _io_rows(_graph_inputs(loaded), _graph_inputs(inferred), shape_overrides or {}),
        "outputs": _io_rows(list(loaded.graph.outputs), list(inferred.graph.outputs), {}),
        "nodes": {"main_graph": len(loaded.graph), "total": sum(histogram.values()),
                  "subgraphs": sum(1 for _ in loaded.graph.subgraphs())},
        "op_histogram": dict(histogram.most_common()),
        "parameters": _parameter_stats(weights),
        "sparsity": _sparsity(weights, loaded),
        "macs": {**_count_macs(inferred), "per_sample": per_sample},
        "precision": _precision(loaded, histogram, weights),
        "shape_overrides": {k: list(v) for k, v in (shape_overrides or {}).items()},
        "shape_inference": "ok" if shape_inference_ok else "failed",
        "notes": notes,
    }
    return info


def _one_sample(model: ir.Model) -> dict[str, Any] | None:
    """Set the batch axis to 1 on ``model`` (a clone) when it is the only unknown input dim; returns
    ``{"batch_axis": name, "size": 1}`` then, else ``None`` and the model is left as it is."""
    from graphopt.data import batch_axis, input_specs

    specs = input_specs(model)
    axis = batch_axis(specs)
    if axis.kind != "dynamic" or not specs or any(not isinstance(d, int) for s in specs for d in s.shape[1:]):
        return None
    for value in _graph_inputs(model):
        value.shape = ir.Shape([1, *list(value.shape.dims)[1:]])
    return {"batch_axis": axis.name, "size": 1}


def _infer_shapes(model: ir.Model) -> bool:
    """Run onnx shape inference in place (non-strict: unknown custom ops are skipped).

    ``onnx_ir``'s pass strips big initializers before handing the model to onnx, so it also works
    past protobuf's 2 GB limit; it leaves the model unchanged when inference fails.
    """
    from onnx_ir.passes.common import ShapeInferencePass

    for data_prop in (True, False):
        pass_ = ShapeInferencePass(check_type=False, strict_mode=False, data_prop=data_prop)
        failed = []
        handler = _FailureFlag(failed)
        logger = _shape_logger()
        logger.addHandler(handler)
        try:
            pass_(model)
        finally:
            logger.removeHandler(handler)
        if not failed:
            return True
    return False


def _has_unknown_mac_nodes(model: ir.Model) -> bool:
    return any(node.domain in DEFAULT_DOMAINS and node.op_type in MAC_OPS and _node_macs(node) is None
               for node in ir.traversal.RecursiveGraphIterator(model.graph))


def _symbolic_infer(model: ir.Model) -> int:
    """Fill still-dynamic shapes with onnxruntime's symbolic shape inference; returns how many.

    onnx's inference stops at patterns such as ``Slice`` ends computed from ``Shape``; ORT's
    symbolic inference evaluates them. It runs on a proto whose big initializers (> 1 KiB) are
    turned into typed graph inputs, so the weights are not copied. Failures leave ``model`` as is.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:
        return 0
    stripped = model.clone()
    for value in list(stripped.graph.initializers.values()):
        tensor = value.const_value
        if tensor is not None and tensor.nbytes > 1024:
            value.shape, value.dtype = ir.Shape(tensor.shape.dims), tensor.dtype
            if value not in stripped.graph.inputs:
                stripped.graph.inputs.append(value)
            stripped.graph.initializers.pop(value.name)
            value.const_value = None
    try:
        with scratch_cwd():  # it saves a temp model into the working directory when inference is incomplete
            out = SymbolicShapeInference.infer_shapes(ir.to_proto(stripped), auto_merge=True)
    except Exception:  # ORT raises for ops it has no rule for; onnx's shapes stay
        return 0
    if out is None:
        return 0
    found: dict[str, list[int]] = {}
    for info in _all_value_infos(out.graph):
        dims = info.type.tensor_type.shape.dim if info.type.HasField("tensor_type") else None
        if dims is not None and info.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            found[info.name] = [int(d.dim_value) for d in dims]
    resolved = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            if value.name in found and _static_dims(value) is None:
                value.shape = ir.Shape(found[value.name])
                resolved += 1
    return resolved


def _all_value_infos(graph: onnx.GraphProto):
    yield from graph.value_info
    yield from graph.output
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_value_infos(sub)


def _shape_logger() -> logging.Logger:
    return logging.getLogger("onnx_ir.passes.common.shape_inference")


class _FailureFlag(logging.Handler):
    """Notes that ``onnx_ir``'s shape inference pass reported a failure (it logs instead of raising)."""

    def __init__(self, flag: list[bool]) -> None:
        super().__init__(logging.WARNING)
        self.flag = flag

    def emit(self, record: logging.LogRecord) -> None:
        if "Shape inference failed" in record.getMessage():
            self.flag.append(True)


def _file_bytes(path: Path | None) -> int | None:
    if path is None or not path.is_file():
        return None
    return path.stat().st_size


def _graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Real inputs: old (IR < 4) models also list their initializers as inputs."""
    return [v for v in model.graph.inputs if v.name not in model.graph.initializers]


def _io_rows(declared: list[ir.Value], inferred: list[ir.Value], overrides: dict) -> list[dict[str, Any]]:
    rows = []
    for value, after in zip(declared, inferred):
        row: dict[str, Any] = {"name": value.name, "dtype": _dtype_name(value.dtype),
                               "shape": _shape_json(value.shape)}
        if value.name in overrides:
            row["override"] = list(overrides[value.name])
        elif after.shape is not None and _shape_json(after.shape) != row["shape"]:
            row["inferred_shape"] = _shape_json(after.shape)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- ops


def _op_key(node: ir.Node) -> str:
    return node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}"


def op_histogram(model: ir.Model) -> collections.Counter[str]:
    """Count per op type over the main graph and every subgraph; ``domain::Op`` outside ai.onnx."""
    return collections.Counter(_op_key(n) for n in ir.traversal.RecursiveGraphIterator(model.graph))


# ---------------------------------------------------------------- weights


class _Weight:
    """A constant tensor (initializer or ``Constant`` node output) and where it comes from."""

    __slots__ = ("value", "tensor", "in_subgraph")

    def __init__(self, value: ir.Value, tensor: ir.TensorProtocol, in_subgraph: bool) -> None:
        self.value, self.tensor, self.in_subgraph = value, tensor, in_subgraph

    @property
    def name(self) -> str:
        return self.value.name or ""

    @property
    def dtype(self) -> ir.DataType:
        return self.tensor.dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.tensor.shape.dims)

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _weights(model: ir.Model) -> list[_Weight]:
    """Initializers of every graph plus tensors held in ``Constant`` nodes."""
    found: list[_Weight] = []
    for graph in model.graphs():
        sub = graph is not model.graph
        for value in graph.initializers.values():
            if value.const_value is not None:
                found.append(_Weight(value, value.const_value, sub))
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and "value" in node.attributes:
            tensor = node.attributes["value"].value
            if isinstance(tensor, ir.TensorProtocol):
                found.append(_Weight(node.outputs[0], tensor, node.graph is not model.graph))
    return found


def _is_numeric(dtype: ir.DataType) -> bool:
    return dtype.is_floating_point() or (dtype.is_integer() and dtype != ir.DataType.BOOL)


def _parameter_stats(weights: list[_Weight]) -> dict[str, Any]:
    """Parameters = elements of float/int constant tensors; bytes per dtype over all of them."""
    by_dtype: dict[str, int] = collections.defaultdict(int)
    params = 0
    for w in weights:
        by_dtype[_dtype_name(w.dtype)] += int(w.tensor.nbytes)
        if _is_numeric(w.dtype):
            params += w.size
    return {
        "count": int(params),
        "tensors": len(weights),
        "bytes_by_dtype": dict(sorted(by_dtype.items(), key=lambda kv: -kv[1])),
        "total_bytes": int(sum(by_dtype.values())),
    }


def _is_weight(w: _Weight) -> bool:
    return len(w.shape) >= 2 and (w.dtype.is_floating_point() or w.dtype in LOW_BIT_INT) and w.size > 0


def _sparsity(weights: list[_Weight], model: ir.Model) -> dict[str, Any]:
    """Exact-zero fraction per weight (≥ 2 dims) and overall; which weights follow 2:4."""
    rows = []
    zeros_total = elems_total = 0
    for w in weights:
        if not _is_weight(w):
            continue
        array = w.tensor.numpy()
        zeros = int(array.size - np.count_nonzero(array))
        axis = reduction_axis(w.value, len(w.shape))
        zeros_total += zeros
        elems_total += array.size
        rows.append({"name": w.name, "shape": list(w.shape), "dtype": _dtype_name(w.dtype),
                     "zeros": zeros, "fraction": zeros / array.size,
                     "two_four": follows_n_m(array, axis, 2, 4), "axis": axis})
    rows.sort(key=lambda r: -r["fraction"])
    return {
        "overall": (zeros_total / elems_total) if elems_total else 0.0,
        "weights": rows,
        "weights_2_4": [r["name"] for r in rows if r["two_four"]],
        "any_2_4": any(r["two_four"] for r in rows),
    }


# ---------------------------------------------------------------- MACs


def _static_dims(value: ir.Value | None) -> tuple[int, ...] | None:
    """The value's dims when all are known ints (a constant's own shape counts), else None."""
    if value is None:
        return None
    if value.const_value is not None:
        return tuple(int(d) for d in value.const_value.shape.dims)
    shape = value.shape
    if shape is None or not all(isinstance(d, int) for d in shape.dims):
        return None
    return tuple(int(d) for d in shape.dims)


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _node_macs(node: ir.Node) -> int | None:
    """MACs of one node (formulas in the module docstring); None when shapes are not static."""
    op = node.op_type
    if op in ("Conv", "ConvInteger", "QLinearConv"):
        w = _static_dims(_input(node, 3 if op == "QLinearConv" else 1))
        y = _static_dims(node.outputs[0])
        if w is None or y is None or len(w) < 2:
            return None
        return math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":
        x, w = _static_dims(_input(node, 0)), _static_dims(_input(node, 1))
        if x is None or w is None or len(w) < 2:
            return None
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        a, b = _static_dims(_input(node, 0)), _static_dims(_input(node, 1))
        if a is None or b is None or len(a) != 2 or len(b) != 2:
            return None
        m, k = (a[1], a[0]) if _int_attr(node, "transA") else a
        n = b[0] if _int_attr(node, "transB") else b[1]
        return m * k * n
    if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
        a = _static_dims(_input(node, 0))
        b = _static_dims(_input(node, 3 if op == "QLinearMatMul" else 1))
        if a is None or b is None or not a or not b:
            return None
        k = a[-1]
        m = a[-2] if len(a) >= 2 else 1
        n = b[-1] if len(b) >= 2 else 1
        try:
            batch = math.prod(np.broadcast_shapes(a[:-2], b[:-2]))
        except ValueError:
            return None
        return batch * m * k * n
    return None


def _int_attr(node: ir.Node, name: str) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else 0


def macs_by_node(model: ir.Model, shape_overrides: dict[str, tuple[int, ...]] | None = None) -> dict[str, int | None]:
    """MACs of every MAC-heavy node of the main graph by node name (``None`` when its shapes are not
    static), at the shapes inference finds after ``shape_overrides``. The model is not modified."""
    inferred = model.clone()
    _apply_overrides(inferred, dict(shape_overrides or {}))
    _infer_shapes(inferred)
    if _has_unknown_mac_nodes(inferred):
        _symbolic_infer(inferred)
    return {node.name: _node_macs(node) for node in inferred.graph
            if node.domain in DEFAULT_DOMAINS and node.op_type in MAC_OPS}


def _count_macs(model: ir.Model) -> dict[str, Any]:
    """Total and per-op-type MACs of the MAC-heavy ops; nodes with non-static shapes are unknown."""
    by_op: dict[str, int] = collections.defaultdict(int)
    unknown: dict[str, int] = collections.defaultdict(int)
    counted = in_subgraphs = 0
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.domain not in DEFAULT_DOMAINS or node.op_type not in MAC_OPS:
            continue
        macs = _node_macs(node)
        if macs is None:
            unknown[node.op_type] += 1
            continue
        counted += 1
        by_op[node.op_type] += int(macs)
        if node.graph is not model.graph:
            in_subgraphs += int(macs)
    return {
        "total": int(sum(by_op.values())),
        "by_op_type": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
        "nodes_counted": counted,
        "unknown_nodes": int(sum(unknown.values())),
        "unknown_by_op_type": dict(unknown),
        "in_subgraphs": in_subgraphs,
        "complete": not unknown,
    }


# ---------------------------------------------------------------- precision


def is_quant_op(key: str) -> bool:
    """Whether an op key (``Op`` or ``domain::Op``) is a quantized op (Q/DQ, QLinear*, *Integer, contrib)."""
    op = key.split("::")[-1]
    return (op in QDQ_OPS or op in DYNAMIC_QUANT_OPS or op in QUANT_CONTRIB_OPS
            or op.startswith("QLinear") or op.endswith("Integer"))


def _precision(model: ir.Model, histogram: collections.Counter[str], weights: list[_Weight]) -> dict[str, Any]:
    """Already quantized? fp16/bf16? Summarised as one word such as ``fp32`` or ``int8 (QDQ)``.

    * quantized: any QuantizeLinear/DequantizeLinear, ``QLinear*``, ``*Integer``, dynamic or
      contrib quantized op, or int8/uint8/int4 weights (≥ 2 dims);
    * format: ``QDQ`` (Q/DQ pairs), ``QOperator`` (``QLinear*``/``*Integer``/contrib ops),
      ``dynamic`` (DynamicQuantizeLinear), ``weight-only`` (DequantizeLinear on weights, no Q);
    * fp16 / bf16: an initializer or any declared/inferred tensor of that type.
    """
    ops = {k.split("::")[-1] for k in histogram}
    quant_ops = sorted(k for k in histogram if is_quant_op(k))
    int_weights = sorted({_dtype_name(w.dtype) for w in weights if _is_weight(w) and w.dtype in LOW_BIT_INT})
    quantized = bool(quant_ops or int_weights)
    fmt = None
    if quantized:
        if ops & DYNAMIC_QUANT_OPS:
            fmt = "dynamic"
        elif any(is_quant_op(k) and k.split("::")[-1] not in QDQ_OPS for k in quant_ops):
            fmt = "QOperator"
        elif "QuantizeLinear" in ops:
            fmt = "QDQ"
        elif "DequantizeLinear" in ops:
            fmt = "weight-only"

    tensor_types = _tensor_dtypes(model)
    half = {label: (any(w.dtype == dt for w in weights) or dt in tensor_types) for dt, label in HALF_FLOATS.items()}
    weight_floats = {w.dtype for w in weights if _is_weight(w) and w.dtype.is_floating_point()}
    if not weight_floats:
        weight_floats = {dt for dt in tensor_types if dt.is_floating_point()}
    float_labels = [_float_label(dt) for dt in sorted(weight_floats, key=lambda d: d.value)]
    halves = [label for label, present in half.items() if present]

    if quantized:
        bits = "int4" if int_weights and all(t in ("int4", "uint4") for t in int_weights) else "int8"
        summary = f"mixed {bits}/{'/'.join(halves)}" if halves else (f"{bits} ({fmt})" if fmt else bits)
    elif len(float_labels) > 1 or (halves and float_labels and float_labels != halves):
        summary = "mixed " + "/".join(dict.fromkeys(halves + float_labels))
    elif float_labels:
        summary = float_labels[0]
    else:
        summary = "/".join(halves) or "no float tensors"
    return {
        "summary": summary,
        "quantized": quantized,
        "quant_format": fmt,
        "quant_ops": quant_ops,
        "int_weight_dtypes": int_weights,
        "fp16": half["fp16"],
        "bf16": half["bf16"],
        "float_weight_dtypes": [_dtype_name(dt) for dt in sorted(weight_floats, key=lambda d: d.value)],
    }


def _tensor_dtypes(model: ir.Model) -> set[ir.DataType]:
    """Element types of every graph input/output and node output that carries a type."""
    found: set[ir.DataType] = set()
    for graph in model.graphs():
        for value in (*graph.inputs, *graph.outputs):
            if value.dtype is not None:
                found.add(value.dtype)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for value in node.outputs:
            if value.dtype is not None:
                found.add(value.dtype)
    return found


def _float_label(dtype: ir.DataType) -> str:
    return {ir.DataType.FLOAT: "fp32", ir.DataType.DOUBLE: "fp64", **HALF_FLOATS}.get(dtype, _dtype_name(dtype))


# ---------------------------------------------------------------- formatting helpers


def _dtype_name(dtype: ir.DataType | None) -> str:
    if dtype is None:
        return "unknown"
    return {ir.DataType.FLOAT: "float32", ir.DataType.DOUBLE: "float64"}.get(dtype, dtype.name.lower())


def _shape_json(shape: ir.Shape | None) -> list[int | str] | None:
    """Dims as ints, symbolic dims as their names, unnamed unknown dims as ``"?"``; None if no shape."""
    if shape is None:
        return None
    return [int(d) if isinstance(d, int) else (d.value if d.value is not None else "?") for d in shape.dims]


def _fmt_dims(dims: Iterable[int]) -> str:
    return "x".join(str(d) for d in dims)


def _fmt_shape(shape: list[int | str] | None) -> str:
    return "(?)" if shape is None else "(" + ", ".join(str(d) for d in shape) + ")"


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{int(n)} {unit}".rstrip()


def _bytes(n: int) -> str:
    for scale, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n} B"


# ---------------------------------------------------------------- rendering


def render_inspection(info: dict[str, Any], console, top: int = 10) -> None:
    """Print ``info`` (from :func:`inspect_model`) as compact rich tables."""
    from rich import box
    from rich.table import Table

    def table(title: str, *columns: str) -> Table:
        t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", title_style="bold")
        for i, col in enumerate(columns):
            t.add_column(col, justify="left" if i == 0 else "right")
        return t

    params, sparsity, macs, prec = info["parameters"], info["sparsity"], info["macs"], info["precision"]
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("model", info["model"] or info["graph_name"] or "(in memory)"),
        ("producer", info["producer"] or "unknown"),
        ("IR / opsets", f"{info['ir_version']} / " + ", ".join(f"{d} {v}" for d, v in info["opsets"].items())),
        ("nodes", f"{info['nodes']['total']} ({info['nodes']['main_graph']} in the main graph, "
                  f"{info['nodes']['subgraphs']} subgraphs)"),
        ("parameters", f"{_human(params['count'])} in {params['tensors']} tensors, {_bytes(params['total_bytes'])} ("
                       + ", ".join(f"{k} {_bytes(v)}" for k, v in params["bytes_by_dtype"].items()) + ")"),
        ("precision", prec["summary"] + (f"  [{', '.join(prec['quant_ops'][:4])}]" if prec["quant_ops"] else "")),
        ("sparsity", f"{sparsity['overall']:.1%} zeros in weights"
                     + (f"; 2:4 in {len(sparsity['weights_2_4'])} weights" if sparsity["any_2_4"] else "; no 2:4 weights")),
        ("MACs", _macs_line(macs, info["inputs"])),
    ]
    if info["file_bytes"] is not None:
        rows.insert(1, ("file", _bytes(info["file_bytes"])))
    for key, value in rows:
        summary.add_row(key, value)
    console.print(summary)

    io = table("inputs / outputs", "name", "kind", "dtype", "shape")
    for kind in ("inputs", "outputs"):
        for row in info[kind]:
            shape = _fmt_shape(row["shape"])
            if "override" in row:
                shape += f" → {_fmt_shape(row['override'])}"
            elif "inferred_shape" in row:
                shape += f" → {_fmt_shape(row['inferred_shape'])}"
            io.add_row(row["name"], kind[:-1], row["dtype"], shape)
    console.print(io)

    ops = table("top ops", "op", "count")
    for op, count in list(info["op_histogram"].items())[:top]:
        ops.add_row(op, str(count))
    console.print(ops)

    if macs["by_op_type"] or macs["unknown_nodes"]:
        mt = table("MACs by op type", "op", "MACs", "share", "unknown nodes")
        total = macs["total"] or 1
        for op in dict.fromkeys([*macs["by_op_type"], *macs["unknown_by_op_type"]]):
            value = macs["by_op_type"].get(op, 0)
            mt.add_row(op, _human(value), f"{value / total:.1%}", str(macs["unknown_by_op_type"].get(op, 0)))
        console.print(mt)

    sparse = [w for w in sparsity["weights"] if w["fraction"] > 0][:top]
    if sparse:
        st = table("sparsest weights", "weight", "shape", "zeros", "2:4")
        for w in sparse:
            st.add_row(w["name"], "x".join(map(str, w["shape"])), f"{w['fraction']:.1%}", "yes" if w["two_four"] else "")
        console.print(st)
    for note in info["notes"]:
        console.print(f"note: {note}", highlight=False)


def _macs_line(macs: dict[str, Any], inputs: list[dict[str, Any]]) -> str:
    text = f"{_human(macs['total'])} over {macs['nodes_counted']} nodes"
    if macs.get("per_sample"):
        name = macs["per_sample"]["batch_axis"]
        text += f", per sample (batch axis {name} = 1)" if name else ", per sample (unnamed batch axis = 1)"
    if macs["unknown_nodes"]:
        hints = [f"--shape {row['name']}=" + "x".join(str(d) if isinstance(d, int) else "1" for d in row["shape"])
                 for row in inputs if row["shape"] and "override" not in row
                 and not all(isinstance(d, int) for d in row["shape"])]
        text += f"; {macs['unknown_nodes']} nodes unknown (shapes not static"
        text += f": try {' '.join(hints)})" if hints else ")"
    if macs["in_subgraphs"]:
        text += f"; {_human(macs['in_subgraphs'])} inside subgraphs"
    return text


def model_precision(model: ir.Model) -> dict[str, Any]:
    """The ``precision`` section of :func:`inspect_model` alone (quantized? fp16/bf16? one-word summary)."""
    return _precision(model, op_histogram(model), _weights(model))
