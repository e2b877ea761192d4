"""Exact folds of the written QDQ graph: float work onnxruntime would otherwise run beside the int8 kernels.

Both rewrites leave the model's arithmetic what it was (up to one float rounding of a scale):

* **outlier-split masks** (:mod:`.outlier_split`): the split writes ``X ⊙ m`` (``m_j = 0`` on the outlier
  channels) in front of the quantized layer, so that calibration sees the inlier range. In the QDQ graph the
  mask is work for nothing: a ``QuantizeLinear`` reading ``X`` itself saturates the outlier channels at the
  range's edge, and the layer's int8 weight rows for those channels are exactly 0, so
  ``Σ_k (q_k − z)·w_kj`` gets nothing from them, as with the mask. Dropped when every reader of the mask is a
  ``QuantizeLinear`` whose dequantized value is read only as the activation input of MatMul/Gemm layers whose
  weight rows at the masked channels are all zero (checked on the stored weights, not assumed).
* **constant scales after a quantized MatMul**: attention's scaled scores ``Q·Kᵀ·c`` (``c = 1/√d``) are
  written ``Mul(MatMul(DQ(q), DQ(k)), c)`` (or ``Div`` by ``1/c``). onnxruntime folds ``c`` into its float
  ``FusedMatMul``, but not after a quantized MatMul, where it runs as an extra pass over the scores. With
  ``DQ(a) = (a − z)·s``, ``(DQ(a)·B)·c = ((a − z)·(s·c))·B``: ``c`` moves into the scale of the
  dequantization of one input, when only that MatMul reads it and ``c > 0``.

Measured on MiniLM-L6 (batch 4, 1 thread, AVX-512 VNNI, 40 interleaved runs): the three masks and six scales
were 1.6 % of the int8 model's latency; cosine to fp32 unchanged (0.99190 → 0.99190).

Applied on the ``cpu`` target only: TensorRT fuses scales and masks into its own kernels and wants its
Q/DQ scales untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import helper

from graphopt.passes.int8.graph_edit import drop_unused_initializers, initializer_array, new_initializer
from graphopt.passes.int8.scheme import graph_links

WEIGHTED = ("MatMul", "Gemm")


@dataclasses.dataclass(frozen=True)
class Folds:
    masks: tuple[str, ...]
    """Mask ``Mul`` nodes dropped."""
    scales: tuple[str, ...]
    """``Mul``/``Div`` nodes folded into a dequantization scale."""

    def report(self) -> dict:
        changed = []
        if self.masks:
            changed.append(f"{len(self.masks)} outlier-split mask(s) dropped (saturation + zero weight rows)")
        if self.scales:
            changed.append(f"{len(self.scales)} constant scale(s) after quantized MatMuls folded into their "
                           "DequantizeLinear")
        return {"method": "qdq-folds", "changed": "; ".join(changed) or "nothing to fold: model unchanged",
                "masks": list(self.masks), "scales": list(self.scales)}


def fold(model: onnx.ModelProto) -> Folds:
    """Apply both folds to ``model`` in place (module docstring); returns what was folded."""
    masks = _drop_masks(model)
    scales = _fold_scales(model)
    if masks or scales:
        drop_unused_initializers(model.graph)
    return Folds(tuple(masks), tuple(scales))


def _constant(inits: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    """The value of initializer ``name`` (detached bytes included); ``None`` when it is not one."""
    return initializer_array(inits[name]) if name in inits else None


def _weight(node: onnx.NodeProto, producers, inits) -> np.ndarray | None:
    """The layer's weight as ``[K, N]`` (stored int8 values behind a DequantizeLinear, or a float constant)."""
    name = node.input[1]
    source = producers.get(name)
    if source is not None and source.op_type == "DequantizeLinear":
        name = source.input[0]
    elif source is not None:
        return None
    value = _constant(inits, name)
    if value is None or value.ndim != 2:
        return None
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0):
            return None
        return value.T if attrs.get("transB", 0) else value
    return value


def _links(model: onnx.ModelProto):
    """``(graph, producers, consumers, initializers by name, graph output names)``."""
    producers, consumers = graph_links(model.graph)
    return (model.graph, producers, consumers, {i.name: i for i in model.graph.initializer},
            {o.name for o in model.graph.output})


def _drop_masks(model: onnx.ModelProto) -> list[str]:
    graph, producers, consumers, inits, outputs = _links(model)
    dropped = []
    for mul in list(graph.node):
        if mul.op_type != "Mul" or len(mul.input) != 2 or mul.output[0] in outputs:
            continue
        constant = next((i for i, name in enumerate(mul.input) if name in inits), None)
        if constant is None:
            continue
        mask = _constant(inits, mul.input[constant])
        if mask is None or mask.ndim != 1 or not np.isin(mask, (0.0, 1.0)).all() or mask.all():
            continue
        masked = np.flatnonzero(mask == 0)
        if not _only_zero_rows_read(mul.output[0], masked, producers, consumers, inits):
            continue
        for q in consumers[mul.output[0]]:
            q.input[0] = mul.input[1 - constant]
        graph.node.remove(mul)
        dropped.append(mul.name)
    return dropped


def _only_zero_rows_read(tensor: str, masked: np.ndarray, producers, consumers, inits) -> bool:
    """Whether every path from ``tensor`` is Q → DQ → the activation input of a layer whose weight rows
    ``masked`` are all zero."""
    readers = consumers.get(tensor, [])
    if not readers:
        return False
    for q in readers:
        if q.op_type != "QuantizeLinear" or q.input[0] != tensor:
            return False
        dqs = consumers.get(q.output[0], [])
        if not dqs:
            return False
        for dq in dqs:
            if dq.op_type != "DequantizeLinear":
                return False
            layers = consumers.get(dq.output[0], [])
            if not layers:
                return False
            for layer in layers:
                if layer.op_type not in WEIGHTED or layer.input[0] != dq.output[0] or dq.output[0] in layer.input[1:]:
                    return False
                weight = _weight(layer, producers, inits)
                if weight is None or weight.shape[0] <= masked.max() or np.any(weight[masked] != 0):
                    return False
    return True


def _fold_scales(model: onnx.ModelProto) -> list[str]:
    graph, producers, consumers, inits, outputs = _links(model)
    folded = []
    for node in list(graph.node):
        if node.op_type not in ("Mul", "Div") or len(node.input) != 2 or node.output[0] in outputs:
            continue
        at = 1 if node.input[1] in inits else 0 if node.op_type == "Mul" and node.input[0] in inits else None
        value = None if at is None else _constant(inits, node.input[at])
        if value is None or value.size != 1 or not np.isfinite(value).all() or float(value.reshape(-1)[0]) <= 0:
            continue
        factor = float(value.reshape(-1)[0]) if node.op_type == "Mul" else 1.0 / float(value.reshape(-1)[0])
        data = node.input[1 - at]
        matmul = producers.get(data)
        if matmul is None or matmul.op_type != "MatMul" or matmul.output[0] in outputs or \
                len(consumers.get(matmul.output[0], [])) != 1:
            continue
        dq = _private_dequantize(matmul, producers, consumers, inits)
        if dq is None:
            continue
        scale = _constant(inits, dq.input[1])
        dq.input[1] = new_initializer(graph, inits, dq.input[1] + "_folded_scale", scale * np.float32(factor))
        for reader in consumers.get(node.output[0], []):
            reader.input[:] = [data if name == node.output[0] else name for name in reader.input]
        graph.node.remove(node)
        folded.append(node.name)
    return folded


def _private_dequantize(matmul: onnx.NodeProto, producers, consumers, inits) -> onnx.NodeProto | None:
    """A DequantizeLinear feeding ``matmul`` that nothing else reads, with a constant float scale."""
    for name in matmul.input[:2]:
        dq = producers.get(name)
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 2:
            continue
        if len(consumers.get(dq.output[0], [])) != 1 or list(matmul.input).count(name) != 1:
            continue
        scale = _constant(inits, dq.input[1])
        if scale is not None and scale.dtype == np.float32:
            return dq
    return None
