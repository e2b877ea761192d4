"""SmoothQuant (Xiao et al., 2023): move activation outliers into the weights before quantizing.

For a MatMul / Gemm ``Y = X·W`` with a constant weight, any positive per-input-channel vector ``s``
gives the same product ``Y = (X·diag(s)⁻¹)·(diag(s)·W)``. Activations of transformers carry a few
channels with values 10–100× the rest (BERT's FFN inputs, the LayerNorm outputs); a per-tensor
activation scale spends its 8 bits on them. Dividing channel ``j`` of ``X`` by

    s_j = max|X_j|^α / max|W_j|^(1−α)

flattens ``X`` and moves the spread into the rows of ``W``, which are quantized per output channel
and have bits to spare. ``α`` is searched per activation over :data:`ALPHAS` (``0`` = unchanged) by
the error of the *quantized layer's output* on calibration rows: ``SQNR = 10·log10(Σ Y² / Σ (Y − Ŷ)²)``
with ``Ŷ = Q(X/s)·Q(W·s)`` (the target's activation type at the rows' min/max, per-channel weights at the
scheme's weight bits). Several layers reading the same ``X`` (Q, K, V) share one ``s`` (``max|W_j|``
over all their weights) and are judged by the worst of them. An activation is smoothed only when that
gains at least :data:`MIN_GAIN_DB`.

Where ``X/s`` goes (the fp32 model's outputs are unchanged up to float rounding): into the producer when
that is exact and only the smoothed layers read ``X`` — a ``LayerNormalization`` (its scale and bias
divided by ``s``) or a ``Mul`` by a constant (GELU's final ``·0.5`` becomes ``0.5/s``; the outlier split's
mask), looking up through ``Reshape`` nodes that keep the last axis; otherwise an explicit
``Mul(X, 1/s)`` in front of the smoothed layers (a post-LN BERT's LayerNorm output is also the residual
stream, which must keep ``X``).

**Off by default** (``Int8Options.smoothquant``, ``--smoothquant``), by measurement on MiniLM-L6 (batch 4,
sequence 64, with the outlier split and float attention MatMuls): smoothing only where it folds exactly
(two FFN inputs) left the mean cosine of ``last_hidden_state`` where it was (0.9916 → 0.9914); smoothing
every activation that gains, with 22 explicit ``Mul`` nodes, raises it to ~0.996 but costs latency (the
README's int8 table) — a trade for users who want accuracy first.

The split and smoothing share one observation run (:data:`SAMPLES` samples: ``max|X_j|`` over every row,
:data:`ROWS` rows kept for the α search).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.calibration import stream_tensors
from graphopt.data import DataSet
from graphopt.passes.int8.graph_edit import (
    drop_unused_initializers,
    new_initializer,
    unique_node_name,
    unique_tensor_name,
)
from graphopt.passes.int8.scheme import Int8Scheme, constant_names, graph_links
from graphopt.verify import sqnr_db

ALPHAS = (0.0, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9)
"""Migration strengths tried per activation (the paper uses 0.5 for most models, up to 0.75–0.85)."""
MIN_GAIN_DB = 1.0
"""Smooth an activation only when its worst layer's output SQNR gains at least this (dB)."""
SAMPLES = 32
"""Calibration samples run to measure ``max|X_j|`` and draw the rows of the α search."""
ROWS = 2048
"""Rows of ``X`` (tokens) kept per activation for the α search."""


@dataclasses.dataclass(frozen=True)
class LayerSqnr:
    name: str
    sqnr_before_db: float
    sqnr_after_db: float

    def to_dict(self) -> dict:
        return {"name": self.name, "sqnr_before_db": round(self.sqnr_before_db, 1),
                "sqnr_after_db": round(self.sqnr_after_db, 1)}


@dataclasses.dataclass(frozen=True)
class Smoothing:
    """One smoothed activation: its layers, the chosen α and where ``1/s`` went."""

    tensor: str
    alpha: float
    folded_into: str
    """``"LayerNormalization"``, ``"Mul"`` (a constant factor of the producer) or ``"explicit Mul"``."""
    layers: tuple[LayerSqnr, ...]


@dataclasses.dataclass(frozen=True)
class SmoothQuantResult:
    model: onnx.ModelProto
    smoothed: tuple[Smoothing, ...]
    judged: tuple[LayerSqnr, ...]
    """Every layer looked at (smoothed or not), for the report."""
    split: tuple[LayerSqnr, ...] = ()
    """Layers whose outlier input channels now run in float (:mod:`.outlier_split`)."""

    def reports(self, *, smooth: bool, split: bool) -> list[dict]:
        """The int8 report's ``methods`` entries of the methods that ran."""
        found = []
        if split:
            found.append({"method": "outlier-split",
                          "changed": f"{len(self.split)} layer(s) run their outlier input channels in float"
                          if self.split else "no activation with outlier channels: model unchanged",
                          "layers": [layer.to_dict() for layer in self.split]})
        if smooth:
            folds = [s.folded_into for s in self.smoothed]
            summary = (f"{len(self.smoothed)} activation(s) smoothed "
                       f"({sum(len(s.layers) for s in self.smoothed)} layer(s)), 1/s folded into "
                       + ", ".join(f"{folds.count(k)} {k}" for k in dict.fromkeys(folds))) if self.smoothed else \
                f"no activation gained ≥ {MIN_GAIN_DB:g} dB where 1/s folds exactly: model unchanged"
            found.append({"method": "smoothquant", "changed": summary,
                          "layers": [layer.to_dict() for s in self.smoothed for layer in s.layers],
                          "alpha": {s.tensor: s.alpha for s in self.smoothed}})
        return found


@dataclasses.dataclass(frozen=True)
class MatMulLayer:
    node: onnx.NodeProto
    weight: np.ndarray
    """As ``[K, N]``: input channels on axis 0 (a Gemm's ``transB`` undone)."""
    trans_b: bool


def smoothable_groups(model: onnx.ModelProto, nodes: Iterable[str]) -> dict[str, list[MatMulLayer]]:
    """Activation name → the MatMul / Gemm layers among ``nodes`` that read it with a 2-D constant float weight."""
    wanted = set(nodes)
    constants = constant_names(model)
    inits = {init.name: init for init in model.graph.initializer}
    groups: dict[str, list[MatMulLayer]] = {}
    for node in model.graph.node:
        if node.name not in wanted or node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        x, w = node.input[0], node.input[1]
        init = inits.get(w)
        if x in constants or init is None or init.data_type != onnx.TensorProto.FLOAT or len(init.dims) != 2 \
                or init.data_location == onnx.TensorProto.EXTERNAL:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm" and attrs.get("transA", 0):
            continue
        trans_b = bool(attrs.get("transB", 0)) if node.op_type == "Gemm" else False
        weight = numpy_helper.to_array(init)
        groups.setdefault(x, []).append(MatMulLayer(node, weight.T if trans_b else weight, trans_b))
    return groups


def smooth_scales(x_absmax: np.ndarray, weights: list[np.ndarray], alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^α / max|W_j|^(1−α)`` (``max|W_j|`` over every weight's row ``j``); 1 where undefined."""
    w_absmax = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
    ok = (x_absmax > 0) & (w_absmax > 0)
    scales = np.ones_like(x_absmax, dtype=np.float64)
    scales[ok] = x_absmax[ok].astype(np.float64) ** alpha / w_absmax[ok].astype(np.float64) ** (1 - alpha)
    scales = np.clip(scales, 1e-4, 1e4)
    return scales.astype(np.float32)


def fake_quant_activation(x: np.ndarray, scheme: Int8Scheme) -> np.ndarray:
    """``x`` through Q→DQ at its own min/max, with the scheme's activation type."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    if hi == lo:
        return x
    if scheme.activation_symmetric:
        step = max(-lo, hi) / 127
        return np.clip(np.round(x / step), -127, 127) * step
    step = (hi - lo) / 255
    zero = np.round(-lo / step)
    return (np.clip(np.round(x / step) + zero, 0, 255) - zero) * step


def fake_quant_weight(w: np.ndarray, scheme: Int8Scheme) -> np.ndarray:
    """``w`` (``[K, N]``) through symmetric int8 per output channel (per tensor without ``per_channel``)."""
    levels = 63 if scheme.reduce_range else 127
    peak = np.abs(w).max(axis=0, keepdims=True) if scheme.per_channel else np.abs(w).max(keepdims=True)
    step = np.where(peak > 0, peak / levels, 1.0)
    return np.clip(np.round(w / step), -levels, levels) * step


def output_sqnr_db(x: np.ndarray, w: np.ndarray, scales: np.ndarray, scheme: Int8Scheme) -> float:
    """SQNR (dB) of ``Q(X/s)·Q(W·s)`` against ``X·W``."""
    reference = x @ w
    approx = fake_quant_activation(x / scales, scheme) @ fake_quant_weight(w * scales[:, None], scheme)
    return sqnr_db(float((reference ** 2).sum()), float(((reference - approx) ** 2).sum()))


def input_sqnr_db(x: np.ndarray, scheme: Int8Scheme) -> float:
    """SQNR (dB) of ``x`` through Q→DQ at its own min/max (the activation alone, no weight)."""
    return sqnr_db(float((x ** 2).sum()), float(((x - fake_quant_activation(x, scheme)) ** 2).sum()))


def split_sqnr_db(x: np.ndarray, w: np.ndarray, channels: np.ndarray, scheme: Int8Scheme) -> float:
    """SQNR (dB) against ``X·W`` of the split layer: ``Q(X⊙m)·Q(W⊙m) + X[:, O]·W[O, :]`` (:mod:`.outlier_split`)."""
    inliers_x, inliers_w = x.copy(), w.copy()
    inliers_x[:, channels] = 0.0
    inliers_w[channels, :] = 0.0
    reference = x @ w
    approx = fake_quant_activation(inliers_x, scheme) @ fake_quant_weight(inliers_w, scheme) + x[:, channels] @ w[channels]
    return sqnr_db(float((reference ** 2).sum()), float(((reference - approx) ** 2).sum()))


def smoothquant(model: onnx.ModelProto, data: DataSet, nodes: Iterable[str], scheme: Int8Scheme, *,
                smooth: bool = True, split: bool = True, split_below_db: float = 22.0, batch_size: int = 8,
                samples: int = SAMPLES, rows: int = ROWS) -> SmoothQuantResult:
    """``model`` with outlier channels split off (``split``, :mod:`.outlier_split`) where the activation
    quantizes below ``split_below_db`` (:func:`input_sqnr_db`; the layers int8 would otherwise keep in
    float), and every activation smoothed where it gains and folds exactly (``smooth``; module
    docstring); ``model`` is not edited."""
    from graphopt.passes.int8.methods.outlier_split import outlier_channels, split_outliers

    groups = smoothable_groups(model, nodes)
    if not groups or not (smooth or split):
        return SmoothQuantResult(model, (), (), ())
    absmax, kept = _observe(model, data.take(min(samples, len(data))), list(groups), batch_size, rows)
    result = onnx.shape_inference.infer_shapes(model)  # a copy, with the shapes _fold_target reads
    smoothed: list[Smoothing] = []
    judged: list[LayerSqnr] = []
    splits: list[LayerSqnr] = []
    ones = None
    for tensor, layers in groups.items():
        if tensor not in kept:
            continue
        x, peaks = kept[tensor], absmax[tensor]
        ones = np.ones(x.shape[1], np.float32)
        low = split and input_sqnr_db(x, scheme) < split_below_db
        channels = outlier_channels(peaks) if low else np.zeros(0, dtype=np.int64)
        if len(channels):
            splits += [LayerSqnr(layer.node.name, output_sqnr_db(x, layer.weight, ones, scheme),
                                 split_sqnr_db(x, layer.weight, channels, scheme)) for layer in layers]
            layers = split_outliers(result, tensor, layers, channels)
            tensor = layers[0].node.input[0]
            x = x.copy()
            x[:, channels] = 0.0
            peaks = peaks.copy()
            peaks[channels] = 0.0
        if not smooth:
            continue
        weights = [layer.weight for layer in layers]
        best_alpha, best = 0.0, None
        before = [output_sqnr_db(x, w, ones, scheme) for w in weights]
        for alpha in ALPHAS[1:]:
            scales = smooth_scales(peaks, weights, alpha)
            after = [output_sqnr_db(x, w, scales, scheme) for w in weights]
            if best is None or min(after) > min(best):
                best_alpha, best = alpha, after
        gain = min(best) - min(before) if best is not None else 0.0
        chosen = best if gain >= MIN_GAIN_DB else before
        rows_out = tuple(LayerSqnr(layer.node.name, b, a) for layer, b, a in zip(layers, before, chosen))
        judged.extend(rows_out)
        if gain < MIN_GAIN_DB:
            continue
        folded = _apply(result, tensor, layers, smooth_scales(peaks, weights, best_alpha))
        smoothed.append(Smoothing(tensor, best_alpha, folded, rows_out))
    if smoothed or splits:
        drop_unused_initializers(result.graph)
    return SmoothQuantResult(result, tuple(smoothed), tuple(judged), tuple(splits))


def _observe(model: onnx.ModelProto, data: DataSet, tensors: list[str], batch_size: int,
             rows: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per-channel ``max|X_j|`` of each tensor over ``data``, and up to ``rows`` of its rows (strided per batch)."""
    absmax: dict[str, np.ndarray] = {}
    kept: dict[str, list[np.ndarray]] = {}
    per_batch_rows = max(1, rows * batch_size // max(len(data), 1))

    def consume(batch: dict[str, np.ndarray]) -> None:
        for name, value in batch.items():
            if value.dtype != np.float32 or value.ndim < 2:
                continue
            flat = value.reshape(-1, value.shape[-1])
            peak = np.abs(flat).max(axis=0)
            absmax[name] = peak if name not in absmax else np.maximum(absmax[name], peak)
            stride = max(1, -(-flat.shape[0] // per_batch_rows))
            kept.setdefault(name, []).append(flat[::stride].copy())

    stream_tensors(model, data, tensors, consume, batch_size=batch_size, description="smoothquant: observing")
    return absmax, {name: np.concatenate(parts)[:rows].astype(np.float32) for name, parts in kept.items()}


def _fold_target(graph: onnx.GraphProto, tensor: str, smoothed: set[str]) -> tuple[onnx.NodeProto, int] | None:
    """Where ``tensor / s`` can be folded exactly: ``(node, input index)`` of a ``LayerNormalization``
    (index 1: its scale; its bias follows) or of a ``Mul``'s constant factor, looking up through
    ``Reshape`` nodes that keep the last axis; ``None`` when there is no such place. Every tensor on the
    way must be read only by the next step (finally by the ``smoothed`` layers) and be no graph output."""
    producers, consumers = graph_links(graph)
    inits = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    readers_ok = smoothed
    while True:
        if tensor in outputs or any(r.name not in readers_ok for r in consumers.get(tensor, [])):
            return None
        producer = producers.get(tensor)
        if producer is None or producer.output[0] != tensor:
            return None
        if producer.op_type == "LayerNormalization" and _last_axis(producer) and len(producer.output) == 1 \
                and all(name in inits for name in producer.input[1:] if name):
            return producer, 1
        if producer.op_type == "Mul":
            for index in (0, 1):
                const = inits.get(producer.input[index])
                if const is not None and producer.input[1 - index] not in inits and \
                        const.data_type == onnx.TensorProto.FLOAT and all(d == 1 for d in list(const.dims)[:-1]):
                    return producer, index
            return None
        if producer.op_type == "Reshape" and producer.input[1] in inits:
            shape = numpy_helper.to_array(inits[producer.input[1]])
            if shape.size and shape[-1] > 0 and _keeps_last_axis(graph, producer.input[0], int(shape[-1])):
                readers_ok, tensor = {producer.name}, producer.input[0]
                continue
        return None


def _keeps_last_axis(graph: onnx.GraphProto, tensor: str, size: int) -> bool:
    for info in [*graph.value_info, *graph.input]:
        if info.name == tensor:
            dims = info.type.tensor_type.shape.dim
            return bool(dims) and dims[-1].HasField("dim_value") and dims[-1].dim_value == size
    return False


def _apply(model: onnx.ModelProto, tensor: str, layers: list[MatMulLayer], scales: np.ndarray) -> str:
    """Multiply the layers' weight rows by ``s`` and fold ``1/s`` into :func:`_fold_target` (else an explicit
    ``Mul``); what took the ``1/s``."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    smoothed = {layer.node.name for layer in layers}
    target = _fold_target(graph, tensor, smoothed)
    for layer in layers:
        scaled = layer.weight * scales[:, None]
        node = next(n for n in graph.node if n.name == layer.node.name)
        node.input[1] = new_initializer(graph, inits, node.input[1] + "_smooth", scaled.T if layer.trans_b else scaled)
    inverse = (1.0 / scales).astype(np.float32)
    if target is None:  # an explicit Mul(X, 1/s) right after X's producer, read by the smoothed layers only
        out = unique_tensor_name(graph, tensor + "_smoothed")
        position = next((i + 1 for i, n in enumerate(graph.node) if tensor in n.output), 0)
        graph.node.insert(position, onnx.helper.make_node(
            "Mul", [tensor, new_initializer(graph, inits, tensor + "_smooth_inv", inverse)], [out],
            name=unique_node_name(graph, tensor + "_smooth")))
        for node in graph.node:
            if node.name in smoothed:
                node.input[0] = out
        return "explicit Mul"
    producer, index = target
    indices = range(1, len(producer.input)) if producer.op_type == "LayerNormalization" else (index,)
    for i in indices:
        if producer.input[i]:
            value = numpy_helper.to_array(inits[producer.input[i]])
            value = value * inverse if producer.op_type == "LayerNormalization" else value.reshape(-1) * inverse
            producer.input[i] = new_initializer(graph, inits, producer.input[i] + "_smooth", value)
    return producer.op_type


def _last_axis(node: onnx.NodeProto) -> bool:
    axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), -1)
    return axis == -1
