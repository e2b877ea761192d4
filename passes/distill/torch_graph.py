"""An ONNX graph as a trainable ``torch.nn.Module``: the student that distillation trains.

:class:`TorchGraph` runs the ONNX nodes one by one with torch operations, in the graph's order, so
gradients reach every weight. Its weights are the graph's initializers:

* float initializers with two or more elements are trainable ``nn.Parameter`` s (conv / linear
  weights, biases, norm scales, embedding tables, position tables);
* the running mean and variance of ``BatchNormalization`` are buffers: updated from the batch in
  training mode (torch's ``batch_norm`` with momentum ``1 − onnx momentum``), used as they are in
  eval mode;
* everything else (shapes, axes, scalar constants such as a GELU's 0.5 or a LayerNorm epsilon) stays
  constant.

:func:`write_back` puts the trained values into a copy of the ONNX model, so the exported student is
the student's own graph with the teacher's input/output names, dtypes and dynamic axes unchanged.

Why not onnx2torch: it imports torchvision at import time (its NMS and RoIAlign converters), and the
torchvision wheel this machine's package index serves is a CUDA build that fails to import next to the
CPU torch; it also produces an ``fx`` module whose parameters would have to be mapped back to
initializers by name. The ops below cover the reference models (CNNs with BatchNorm, residual adds and
pooling; BERT-style encoders with LayerNorm, erf-GELU, attention softmax and their shape arithmetic); an
op outside the table is refused with its name before any training starts.

Hook for quantization-aware training (not built yet): ``weight_transform(name, tensor) -> tensor`` is
applied to every trainable weight when the graph runs, which is where a fake-quantizer with a
straight-through estimator plugs in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx_ir as ir
import torch
import torch.nn.functional as F
from torch import nn

from graphopt.errors import InputError

WeightTransform = Callable[[str, torch.Tensor], torch.Tensor]

_TORCH_DTYPES: dict[ir.DataType, torch.dtype] = {
    ir.DataType.FLOAT: torch.float32, ir.DataType.DOUBLE: torch.float64, ir.DataType.FLOAT16: torch.float16,
    ir.DataType.BFLOAT16: torch.bfloat16, ir.DataType.INT64: torch.int64, ir.DataType.INT32: torch.int32,
    ir.DataType.INT16: torch.int16, ir.DataType.INT8: torch.int8, ir.DataType.UINT8: torch.uint8,
    ir.DataType.BOOL: torch.bool,
}

BN_STATISTICS = (3, 4)
"""Inputs of ``BatchNormalization`` that are running statistics (mean, var), not trained by gradient."""


def torch_dtype(dtype: ir.DataType | int) -> torch.dtype:
    dtype = ir.DataType(dtype)
    if dtype not in _TORCH_DTYPES:
        raise InputError(f"distill: tensors of type {dtype.name} are not supported by the torch student")
    return _TORCH_DTYPES[dtype]


def _attrs(node: ir.Node) -> dict[str, Any]:
    return {name: attr.value for name, attr in node.attributes.items()}


class TorchGraph(nn.Module):
    """Run an ONNX graph with torch (see the module docstring for which initializers train)."""

    def __init__(self, model: ir.Model, weight_transform: WeightTransform | None = None) -> None:
        super().__init__()
        graph = model.graph
        unsupported = sorted({n.op_type for n in graph if n.domain not in ("", "ai.onnx") or n.op_type not in OPS})
        if unsupported:
            raise InputError(f"distill: the student uses op(s) {', '.join(unsupported)}, which the torch "
                             f"student does not cover (covered: {', '.join(sorted(OPS))})")
        statistics = {node.inputs[i].name for node in graph if node.op_type == "BatchNormalization"
                      for i in BN_STATISTICS if i < len(node.inputs) and node.inputs[i] is not None}
        self.parameter_names: list[str] = []
        self.buffer_names: list[str] = []
        self.weights = nn.ParameterList()
        self._slots: dict[str, tuple[str, int]] = {}
        for index, (name, value) in enumerate(graph.initializers.items()):
            array = value.const_value.numpy()
            tensor = torch.from_numpy(np.array(array, copy=True))
            if name in statistics and array.dtype.kind == "f":
                self.register_buffer(f"statistic_{len(self.buffer_names)}", tensor)
                self._slots[name] = ("statistic", len(self.buffer_names))
                self.buffer_names.append(name)
            elif array.dtype.kind == "f" and array.size >= 2:
                self.weights.append(nn.Parameter(tensor))
                self._slots[name] = ("weight", len(self.parameter_names))
                self.parameter_names.append(name)
            else:
                self.register_buffer(f"constant_{index}", tensor, persistent=False)
                self._slots[name] = ("constant", index)
        self.input_names = [v.name for v in graph.inputs if v.name not in graph.initializers]
        self.output_names = [v.name for v in graph.outputs]
        self.nodes = [(n.op_type, [v.name if v is not None else "" for v in n.inputs],
                       [v.name for v in n.outputs], _attrs(n)) for n in graph]
        self.weight_transform = weight_transform

    def _initializer(self, name: str) -> torch.Tensor:
        kind, index = self._slots[name]
        if kind == "weight":
            tensor = self.weights[index]
            return self.weight_transform(name, tensor) if self.weight_transform else tensor
        if kind == "statistic":
            return getattr(self, f"statistic_{index}")
        return getattr(self, f"constant_{index}")

    def named_weights(self) -> dict[str, torch.Tensor]:
        """Initializer name → trained tensor, for every parameter and running statistic."""
        found = {name: self.weights[i] for i, name in enumerate(self.parameter_names)}
        found.update({name: getattr(self, f"statistic_{i}") for i, name in enumerate(self.buffer_names)})
        return found

    def forward(self, feeds: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        env: dict[str, torch.Tensor | None] = {"": None}
        for name in self._slots:
            env[name] = self._initializer(name)
        for name in self.input_names:
            env[name] = feeds[name]
        for op_type, inputs, outputs, attrs in self.nodes:
            args = [env[name] for name in inputs]
            extra = {"training": self.training} if op_type == "BatchNormalization" else {}
            results = OPS[op_type](args, attrs, **extra)
            if not isinstance(results, tuple):
                results = (results,)
            for name, value in zip(outputs, results):
                if name:
                    env[name] = value
        return {name: env[name] for name in self.output_names}


def write_back(module: TorchGraph, model: ir.Model) -> ir.Model:
    """A copy of ``model`` whose initializers hold the module's trained weights and statistics."""
    exported = model.clone()
    for name, tensor in module.named_weights().items():
        value = exported.graph.initializers[name]
        array = tensor.detach().to("cpu").numpy().astype(value.const_value.numpy().dtype, copy=True)
        value.const_value = ir.tensor(array, name=name)
    return exported


# ------------------------------------------------------------------------------------------ ops
# Each op takes (inputs, attributes) and returns a tensor or a tuple of tensors (ONNX semantics,
# opset 11-21: attributes that became inputs are read from either place).


def _ints(tensor: torch.Tensor | None) -> list[int]:
    return [] if tensor is None else [int(v) for v in tensor.reshape(-1).tolist()]


def _axes(args: list, attrs: dict, index: int) -> list[int] | None:
    if len(args) > index and args[index] is not None:
        return _ints(args[index])
    return list(attrs["axes"]) if "axes" in attrs else None


def _pads(x: torch.Tensor, attrs: dict, spatial: int, kernel: list[int], strides: list[int],
          dilations: list[int]) -> tuple[torch.Tensor, list[int]]:
    """Explicit begin/end pads per spatial axis (``auto_pad`` resolved); asymmetric pads applied to
    ``x`` with ``F.pad`` so torch gets symmetric ones."""
    auto = attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads_begin, pads_end = [], []
        for axis in range(spatial):
            size = x.shape[2 + axis]
            out = math.ceil(size / strides[axis])
            total = max(0, (out - 1) * strides[axis] + (kernel[axis] - 1) * dilations[axis] + 1 - size)
            small, large = total // 2, total - total // 2
            pads_begin.append(small if auto == "SAME_UPPER" else large)
            pads_end.append(large if auto == "SAME_UPPER" else small)
    elif auto == "VALID":
        pads_begin, pads_end = [0] * spatial, [0] * spatial
    else:
        pads = list(attrs.get("pads", [0] * 2 * spatial))
        pads_begin, pads_end = pads[:spatial], pads[spatial:]
    if pads_begin == pads_end:
        return x, pads_begin
    torch_pads: list[int] = []
    for axis in reversed(range(spatial)):
        torch_pads += [pads_begin[axis], pads_end[axis]]
    return F.pad(x, torch_pads), [0] * spatial


def _conv(args, attrs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    kernel = list(attrs.get("kernel_shape", w.shape[2:]))
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    x, pads = _pads(x, attrs, spatial, kernel, strides, dilations)
    conv = (F.conv1d, F.conv2d, F.conv3d)[spatial - 1]
    return conv(x, w, bias, strides, pads, dilations, attrs.get("group", 1))


def _conv_transpose(args, attrs):
    x, w = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    spatial = w.dim() - 2
    pads = list(attrs.get("pads", [0] * 2 * spatial))
    if pads[:spatial] != pads[spatial:] or "output_shape" in attrs:
        raise InputError("distill: ConvTranspose with asymmetric pads or output_shape is not supported")
    conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[spatial - 1]
    return conv(x, w, bias, list(attrs.get("strides", [1] * spatial)), pads[:spatial],
                list(attrs.get("output_padding", [0] * spatial)), attrs.get("group", 1),
                list(attrs.get("dilations", [1] * spatial)))


def _batch_norm(args, attrs, training: bool):
    x, scale, bias, mean, var = args[:5]
    momentum = 1.0 - attrs.get("momentum", 0.9)
    return F.batch_norm(x, mean, var, scale, bias, training=training, momentum=momentum,
                        eps=attrs.get("epsilon", 1e-5))


def _gemm(args, attrs):
    a, b = args[0], args[1]
    if attrs.get("transA", 0):
        a = a.transpose(0, 1)
    if attrs.get("transB", 0):
        b = b.transpose(0, 1)
    y = attrs.get("alpha", 1.0) * (a @ b)
    if len(args) > 2 and args[2] is not None:
        y = y + attrs.get("beta", 1.0) * args[2]
    return y


def _pool(args, attrs, kind: str):
    x = args[0]
    spatial = x.dim() - 2
    kernel = list(attrs["kernel_shape"])
    strides = list(attrs.get("strides", [1] * spatial))
    dilations = list(attrs.get("dilations", [1] * spatial))
    ceil = bool(attrs.get("ceil_mode", 0))
    if kind == "max":
        pads_given = list(attrs.get("pads", [0] * 2 * spatial))
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET") or pads_given[:spatial] != pads_given[spatial:]:
            x, pads = _pads(x, {**attrs}, spatial, kernel, strides, dilations)
            if pads_given[:spatial] != pads_given[spatial:]:  # F.pad pads with zeros: wrong for max
                raise InputError("distill: MaxPool with asymmetric pads is not supported")
        else:
            pads = pads_given[:spatial]
        pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[spatial - 1]
        return pool(x, kernel, strides, pads, dilations, ceil)
    x, pads = _pads(x, attrs, spatial, kernel, strides, [1] * spatial)
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[spatial - 1]
    return pool(x, kernel, strides, pads, ceil, bool(attrs.get("count_include_pad", 0)))


def _reshape(args, attrs):
    x, shape = args[0], _ints(args[1])
    if not attrs.get("allowzero", 0):
        shape = [x.shape[i] if d == 0 else d for i, d in enumerate(shape)]
    return x.reshape(shape)


def _flatten(args, attrs):
    x, axis = args[0], attrs.get("axis", 1)
    axis = axis + x.dim() if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _squeeze(args, attrs):
    axes = _axes(args, attrs, 1)
    x = args[0]
    if axes is None:
        return x.squeeze()
    for axis in sorted((a % x.dim() for a in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _unsqueeze(args, attrs):
    x = args[0]
    axes = _axes(args, attrs, 1)
    rank = x.dim() + len(axes)
    for axis in sorted(a % rank for a in axes):
        x = x.unsqueeze(axis)
    return x


def _shape(args, attrs):
    dims = list(args[0].shape)
    start, end = attrs.get("start", 0), attrs.get("end", len(dims))
    return torch.tensor(dims[start:end], dtype=torch.int64, device=args[0].device)


def _gather(args, attrs):
    data, indices = args[0], args[1]
    axis = attrs.get("axis", 0) % data.dim()
    indices = torch.where(indices < 0, indices + data.shape[axis], indices)
    picked = data.index_select(axis, indices.reshape(-1))
    return picked.reshape((*data.shape[:axis], *indices.shape, *data.shape[axis + 1:]))


def _slice(args, attrs):
    x = args[0]
    if len(args) > 1:
        starts, ends = _ints(args[1]), _ints(args[2])
        axes = _ints(args[3]) if len(args) > 3 and args[3] is not None else list(range(len(starts)))
        steps = _ints(args[4]) if len(args) > 4 and args[4] is not None else [1] * len(starts)
    else:
        starts, ends = list(attrs["starts"]), list(attrs["ends"])
        axes = list(attrs.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    index: list[slice] = [slice(None)] * x.dim()
    flips = []
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= x.dim()
        size = x.shape[axis]
        if step > 0:
            start = min(max(start + size if start < 0 else start, 0), size)
            end = min(max(end + size if end < 0 else end, 0), size)
            index[axis] = slice(start, end, step)
        else:  # torch has no negative steps: flip, then slice forward
            start = min(max(start + size if start < 0 else start, -1), size - 1)
            end = min(max(end + size if end < 0 else end, -1), size - 1)
            index[axis] = slice(size - 1 - start, size - 1 - end, -step)
            flips.append(axis)
    if flips:
        x = x.flip(flips)
    return x[tuple(index)]


def _concat(args, attrs):
    return torch.cat([a for a in args if a is not None and a.numel() > 0] or [args[0]], dim=attrs["axis"])


def _split(args, attrs):
    x = args[0]
    axis = attrs.get("axis", 0)
    sizes = _ints(args[1]) if len(args) > 1 and args[1] is not None else list(attrs.get("split", []))
    if not sizes:
        parts = attrs.get("num_outputs")
        if parts is None:
            raise InputError("distill: Split without sizes needs num_outputs")
        chunk = math.ceil(x.shape[axis] / parts)
        return tuple(torch.split(x, chunk, dim=axis))
    return tuple(torch.split(x, sizes, dim=axis))


def _expand(args, attrs):
    x, shape = args[0], _ints(args[1])
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(shape)))


def _reduce(fn: Callable[..., torch.Tensor], axes_input: int = 1):
    def run(args, attrs):
        x = args[0]
        axes = _axes(args, attrs, axes_input)
        keep = bool(attrs.get("keepdims", 1))
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.dim()))
        return fn(x, [a % x.dim() for a in axes], keep)
    return run


def _reduce_max(x, axes, keep):
    for axis in sorted(axes, reverse=True):
        x = x.amax(dim=axis, keepdim=keep)
    return x


def _reduce_min(x, axes, keep):
    for axis in sorted(axes, reverse=True):
        x = x.amin(dim=axis, keepdim=keep)
    return x


def _layer_norm(args, attrs):
    x, scale = args[0], args[1]
    bias = args[2] if len(args) > 2 else None
    axis = attrs.get("axis", -1) % x.dim()
    return F.layer_norm(x, x.shape[axis:], scale, bias, attrs.get("epsilon", 1e-5))


def _softmax(fn):
    def run(args, attrs):
        return fn(args[0], dim=attrs.get("axis", -1))
    return run


def _clip(args, attrs):
    low = args[1] if len(args) > 1 and args[1] is not None else attrs.get("min")
    high = args[2] if len(args) > 2 and args[2] is not None else attrs.get("max")
    return torch.clamp(args[0], low, high)


def _cast(args, attrs):
    return args[0].to(torch_dtype(attrs["to"]))


def _constant_of_shape(args, attrs):
    value = attrs.get("value")
    array = value.numpy() if value is not None else np.zeros(1, np.float32)
    fill = torch.from_numpy(np.array(array).reshape(-1)[:1].copy())
    return fill.reshape(()).to(args[0].device).expand(_ints(args[0])).clone()


def _range(args, attrs):
    start, limit, delta = (a.item() for a in args[:3])
    return torch.arange(start, limit, delta, dtype=args[0].dtype, device=args[0].device)


def _div(args, attrs):
    a, b = args
    if not a.is_floating_point() and not b.is_floating_point():
        return torch.div(a, b, rounding_mode="trunc")
    return a / b


def _pad(args, attrs):
    x = args[0]
    mode = attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = _ints(args[1]) if len(args) > 1 else list(attrs["pads"])
    value = args[2].item() if len(args) > 2 and args[2] is not None else attrs.get("value", 0.0)
    rank = x.dim()
    torch_pads: list[int] = []
    for axis in reversed(range(rank)):
        torch_pads += [pads[axis], pads[axis + rank]]
    return F.pad(x, torch_pads, mode={"constant": "constant", "reflect": "reflect", "edge": "replicate"}[mode],
                 value=value if mode == "constant" else None)


def _gelu(args, attrs):
    approximate = attrs.get("approximate", "none")
    return F.gelu(args[0], approximate=approximate.decode() if isinstance(approximate, bytes) else approximate)


def _hard_sigmoid(args, attrs):
    return torch.clamp(attrs.get("alpha", 0.2) * args[0] + attrs.get("beta", 0.5), 0.0, 1.0)


def _variadic(fn):
    def run(args, attrs):
        result = args[0]
        for other in args[1:]:
            result = fn(result, other)
        return result
    return run


def _transpose(args, attrs):
    x = args[0]
    return x.permute(list(attrs.get("perm", reversed(range(x.dim())))))


def _tile(args, attrs):
    return args[0].repeat(_ints(args[1]))


def _resize(args, attrs):
    x = args[0]
    mode = attrs.get("mode", "nearest")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    sizes = _ints(args[3]) if len(args) > 3 and args[3] is not None else None
    scales = args[2].tolist() if len(args) > 2 and args[2] is not None and args[2].numel() else None
    spatial = x.dim() - 2
    size = sizes[2:] if sizes else [int(math.floor(x.shape[2 + i] * scales[2 + i])) for i in range(spatial)]
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    transform = attrs.get("coordinate_transformation_mode", "half_pixel")
    transform = transform.decode() if isinstance(transform, bytes) else transform
    torch_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial]
    return F.interpolate(x, size=size, mode=torch_mode, align_corners=transform == "align_corners")


def _dropout(args, attrs):
    return args[0]


def _unary(fn):
    def run(args, attrs):
        return fn(args[0])
    return run


def _binary(fn):
    def run(args, attrs):
        return fn(args[0], args[1])
    return run


OPS: dict[str, Callable[..., Any]] = {
    "Abs": _unary(torch.abs), "Add": _binary(torch.add), "And": _binary(torch.logical_and),
    "AveragePool": lambda a, k: _pool(a, k, "avg"), "BatchNormalization": _batch_norm, "Cast": _cast,
    "Ceil": _unary(torch.ceil), "Clip": _clip, "Concat": _concat, "ConstantOfShape": _constant_of_shape,
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Div": _div, "Dropout": _dropout,
    "Einsum": lambda a, k: torch.einsum(k["equation"], *a), "Equal": _binary(torch.eq), "Erf": _unary(torch.erf),
    "Exp": _unary(torch.exp), "Expand": _expand, "Flatten": _flatten, "Floor": _unary(torch.floor),
    "Gather": _gather, "Gelu": _gelu, "Gemm": _gemm,
    "GlobalAveragePool": _unary(lambda x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True)),
    "GlobalMaxPool": _unary(lambda x: x.amax(dim=tuple(range(2, x.dim())), keepdim=True)),
    "Greater": _binary(torch.gt), "GreaterOrEqual": _binary(torch.ge), "HardSigmoid": _hard_sigmoid,
    "HardSwish": _unary(F.hardswish), "Identity": _unary(lambda x: x), "LayerNormalization": _layer_norm,
    "LeakyRelu": lambda a, k: F.leaky_relu(a[0], k.get("alpha", 0.01)), "Less": _binary(torch.lt),
    "LessOrEqual": _binary(torch.le), "Log": _unary(torch.log), "LogSoftmax": _softmax(torch.log_softmax),
    "MatMul": _binary(torch.matmul), "Max": _variadic(torch.maximum), "MaxPool": lambda a, k: _pool(a, k, "max"),
    "Mean": lambda a, k: torch.stack(torch.broadcast_tensors(*a)).mean(dim=0), "Min": _variadic(torch.minimum),
    "Mul": _binary(torch.mul), "Neg": _unary(torch.neg), "Not": _unary(torch.logical_not),
    "Or": _binary(torch.logical_or), "Pad": _pad, "Pow": _binary(torch.pow), "Range": _range,
    "Reciprocal": _unary(torch.reciprocal), "ReduceL2": _reduce(lambda x, a, k: torch.linalg.vector_norm(x, 2, a, k)),
    "ReduceMax": _reduce(_reduce_max), "ReduceMean": _reduce(lambda x, a, k: x.mean(dim=a, keepdim=k)),
    "ReduceMin": _reduce(_reduce_min), "ReduceSum": _reduce(lambda x, a, k: x.sum(dim=a, keepdim=k)),
    "Relu": _unary(torch.relu), "Reshape": _reshape, "Resize": _resize, "Shape": _shape,
    "Sigmoid": _unary(torch.sigmoid), "Slice": _slice, "Softmax": _softmax(torch.softmax), "Split": _split,
    "Sqrt": _unary(torch.sqrt), "Squeeze": _squeeze, "Sub": _binary(torch.sub), "Sum": _variadic(torch.add),
    "Tanh": _unary(torch.tanh), "Tile": _tile, "Transpose": _transpose, "Unsqueeze": _unsqueeze,
    "Where": lambda a, k: torch.where(a[0], a[1], a[2]),
}
"""ONNX op type → torch implementation."""
