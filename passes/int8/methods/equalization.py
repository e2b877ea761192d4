"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019) for consecutive convolutions, on the float graph before calibration.

Pairs: ``Conv₁ → f → Conv₂`` where ``Conv₁``'s output feeds only ``f`` and ``f``'s output only ``Conv₂``'s
data input (no graph output on the way), and ``f`` is positively homogeneous — ``f(x/s) = f(x)/s`` for
every ``s > 0`` — applied per channel: none, ``Identity``, ``Relu``, ``LeakyRelu``, ``PRelu``, or a ``Clip``
with lower bound 0 (or none) and no upper bound. ``Clip(0, 6)`` (ReLU6), ``HardSwish``, ``HardSigmoid``,
``Sigmoid``, GELU (``Erf``), ``Mul`` gates (squeeze-excite) are not (``min(x/s, 6) ≠ min(x, 6)/s``): those
pairs are skipped. ``Conv₂`` must be an ordinary (``group = 1``) or a depthwise convolution (``group`` = its
input channels, ``m`` outputs per input channel), the typical depthwise-separable stack.

Maths. Channel ``i`` of ``Conv₁``'s output (weights ``W₁[i]``, bias ``b₁[i]``) reaches ``Conv₂`` through
input channel ``i`` (weights ``W₂[:, i]``; depthwise: ``W₂[i·m:(i+1)·m]``). With ``S = diag(s)``, ``s_i > 0``,

    Conv₂(f(Conv₁(x; W₁, b₁)); W₂) = Conv₂(f(Conv₁(x; S⁻¹W₁, S⁻¹b₁)); W₂S)

exactly, because ``f`` commutes with a positive per-channel scale. With the weight ranges
``r₁_i = max|W₁[i]|`` and ``r₂_i = max|W₂[:, i]|``, Nagel's choice

    s_i = √(r₁_i · r₂_i) / r₂_i    (= √(r₁_i / r₂_i))

makes both ranges equal ``√(r₁_i · r₂_i)``: each channel's share of the weights' (and of the activation's)
8-bit range matches between the two layers. A convolution in the middle of a chain belongs to two pairs;
the pairs are swept in order until no scale moves by more than :data:`TOLERANCE` (at most
:data:`MAX_SWEEPS` sweeps). A channel with an all-zero weight range keeps ``s_i = 1``. Float outputs are
unchanged up to rounding (the test checks 1e-5).

Report: per pair, the weight SQNR (8-bit, the scheme's weight quantization) of both layers before and
after, and the spread ``max r / min r`` of ``Conv₂``'s per-input-channel ranges before and after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.passes.int8.graph_edit import drop_unused_initializers, initializer_array, new_initializer
from graphopt.passes.int8.methods.smoothquant import fake_quant_weight
from graphopt.passes.int8.scheme import Int8Scheme, graph_links
from graphopt.verify import sqnr_db

HOMOGENEOUS = ("Identity", "Relu", "LeakyRelu", "PRelu")
"""Positively homogeneous per-channel activations (a ``Clip`` with no upper bound counts too)."""
TOLERANCE = 1e-3
"""Stop sweeping when every ``|log s_i|`` of a sweep is below this."""
MAX_SWEEPS = 20


@dataclasses.dataclass
class _Pair:
    first: onnx.NodeProto
    act: onnx.NodeProto | None
    second: onnx.NodeProto
    depthwise: bool


@dataclasses.dataclass(frozen=True)
class PairReport:
    first: str
    second: str
    activation: str
    sqnr_before_db: tuple[float, float]
    sqnr_after_db: tuple[float, float]
    spread_before: float
    spread_after: float


@dataclasses.dataclass(frozen=True)
class EqualizationResult:
    model: onnx.ModelProto
    pairs: tuple[PairReport, ...]
    skipped: dict[str, int]
    """Why candidate pairs were not equalized → how many (e.g. the activation between them)."""
    sweeps: int

    def report(self) -> dict:
        skipped = ", ".join(f"{reason} {count}" for reason, count in sorted(self.skipped.items()))
        gains = [min(p.sqnr_after_db) - min(p.sqnr_before_db) for p in self.pairs]
        changed = (f"{len(self.pairs)} Conv pair(s) equalized in {self.sweeps} sweep(s)"
                   + (f"; the pair's lower weight SQNR {np.median(gains):+.1f} dB median" if gains else "")
                   + (f"; skipped: {skipped}" if skipped else ""))
        return {"method": "equalization", "changed": changed,
                "layers": [{"name": f"{p.first} → {p.second}", "activation": p.activation,
                            "sqnr_before_db": [round(v, 2) for v in p.sqnr_before_db],
                            "sqnr_after_db": [round(v, 2) for v in p.sqnr_after_db],
                            "channel_range_spread_before": round(p.spread_before, 1),
                            "channel_range_spread_after": round(p.spread_after, 1)} for p in self.pairs]}


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return onnx.helper.get_attribute_value(attribute)
    return default


def _homogeneous(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> bool:
    if node.op_type in HOMOGENEOUS:
        return True
    if node.op_type != "Clip":
        return False
    low = _attribute(node, "min", None)
    high = _attribute(node, "max", None)
    if len(node.input) > 1 and node.input[1]:
        if node.input[1] not in inits:
            return False
        low = float(numpy_helper.to_array(inits[node.input[1]]))
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in inits:
            return False
        high = float(numpy_helper.to_array(inits[node.input[2]]))
    return (low is None or low == 0.0) and (high is None or np.isinf(high))


def find_pairs(model: onnx.ModelProto) -> tuple[list[_Pair], dict[str, int]]:
    """The ``Conv₁ → f → Conv₂`` pairs (module docstring) and why other ``Conv → … → Conv`` links were skipped."""
    graph = model.graph
    _, consumers = graph_links(graph)
    inits = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    pairs: list[_Pair] = []
    skipped: dict[str, int] = {}

    def weight_ok(node: onnx.NodeProto) -> bool:
        return len(node.input) > 1 and node.input[1] in inits and \
            inits[node.input[1]].data_type == onnx.TensorProto.FLOAT and len(inits[node.input[1]].dims) >= 3 and \
            (len(node.input) < 3 or not node.input[2] or node.input[2] in inits)

    for first in graph.node:
        if first.op_type != "Conv" or not weight_ok(first):
            continue
        readers = consumers.get(first.output[0], [])
        if first.output[0] in outputs or len(readers) != 1:
            continue
        act, second = None, readers[0]
        if second.op_type != "Conv":
            act = second
            later = consumers.get(act.output[0], [])
            if len(later) != 1 or later[0].op_type != "Conv" or act.output[0] in outputs:
                continue
            second = later[0]
            if not _homogeneous(act, inits):
                reason = f"{act.op_type} between (not positively homogeneous)"
                skipped[reason] = skipped.get(reason, 0) + 1
                continue
        if second.input[0] != (act.output[0] if act is not None else first.output[0]) or not weight_ok(second):
            continue
        channels = inits[first.input[1]].dims[0]
        w2 = inits[second.input[1]].dims
        group = _attribute(second, "group", 1)
        if group == 1 and w2[1] == channels:
            pairs.append(_Pair(first, act, second, depthwise=False))
        elif group == channels and w2[1] == 1 and w2[0] % channels == 0:
            pairs.append(_Pair(first, act, second, depthwise=True))
        else:
            skipped["grouped second Conv"] = skipped.get("grouped second Conv", 0) + 1
    return pairs, skipped


def weight_sqnr_db(weight: np.ndarray, scheme: Int8Scheme) -> float:
    """SQNR of symmetric 8-bit (7-bit with ``reduce_range``) weight quantization, per output channel or
    per tensor as the scheme quantizes weights (:func:`~.smoothquant.fake_quant_weight`, output channels
    on axis 0 here)."""
    flat = weight.reshape(weight.shape[0], -1).astype(np.float64)
    error = flat - fake_quant_weight(flat.T, scheme).T
    return sqnr_db(float((flat**2).sum()), float((error**2).sum()))


def _input_ranges(weight: np.ndarray, depthwise: bool, channels: int) -> np.ndarray:
    if depthwise:
        return np.abs(weight).reshape(channels, -1).max(axis=1)
    return np.abs(np.moveaxis(weight, 1, 0)).reshape(channels, -1).max(axis=1)


def _spread(ranges: np.ndarray) -> float:
    positive = ranges[ranges > 0]
    return float(positive.max() / positive.min()) if len(positive) else 1.0


def equalize(model: onnx.ModelProto, scheme: Int8Scheme, nodes: Iterable[str] | None = None) -> EqualizationResult:
    """A copy of ``model`` with every pair (both layers among ``nodes`` when given) equalized (module docstring)."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    pairs, skipped = find_pairs(result)
    if nodes is not None:
        wanted = set(nodes)
        pairs = [p for p in pairs if p.first.name in wanted and p.second.name in wanted]
    if not pairs:
        return EqualizationResult(result, (), skipped, 0)
    inits = {init.name: init for init in graph.initializer}
    weights: dict[str, np.ndarray] = {}
    biases: dict[str, np.ndarray] = {}
    for pair in pairs:
        for node in (pair.first, pair.second):
            weights[node.name] = initializer_array(inits[node.input[1]]).astype(np.float64)
            if len(node.input) > 2 and node.input[2]:
                biases[node.name] = initializer_array(inits[node.input[2]]).astype(np.float64)
    original = {name: w.copy() for name, w in weights.items()}
    sweeps = 0
    for sweeps in range(1, MAX_SWEEPS + 1):  # noqa: B007 - reported
        largest = 0.0
        for pair in pairs:
            w1, w2 = weights[pair.first.name], weights[pair.second.name]
            channels = w1.shape[0]
            r1 = np.abs(w1).reshape(channels, -1).max(axis=1)
            r2 = _input_ranges(w2, pair.depthwise, channels)
            s = np.where((r1 > 0) & (r2 > 0), np.sqrt(r1 * r2) / np.where(r2 > 0, r2, 1.0), 1.0)
            largest = max(largest, float(np.abs(np.log(s)).max()))
            weights[pair.first.name] = w1 / s.reshape(-1, *([1] * (w1.ndim - 1)))
            if pair.first.name in biases:
                biases[pair.first.name] = biases[pair.first.name] / s
            if pair.depthwise:
                per_output = np.repeat(s, w2.shape[0] // channels)
                weights[pair.second.name] = w2 * per_output.reshape(-1, *([1] * (w2.ndim - 1)))
            else:
                weights[pair.second.name] = w2 * s.reshape(1, -1, *([1] * (w2.ndim - 2)))
        if largest < TOLERANCE:
            break
    for node in graph.node:
        if node.name in weights:
            node.input[1] = new_initializer(graph, inits, node.input[1] + "_cle", weights[node.name].astype(np.float32))
            if node.name in biases:
                node.input[2] = new_initializer(graph, inits, node.input[2] + "_cle",
                                                 biases[node.name].astype(np.float32))
    drop_unused_initializers(graph)
    reports = []
    for pair in pairs:
        a, b = pair.first.name, pair.second.name
        channels = original[a].shape[0]
        reports.append(PairReport(
            a, b, pair.act.op_type if pair.act is not None else "none",
            (weight_sqnr_db(original[a], scheme), weight_sqnr_db(original[b], scheme)),
            (weight_sqnr_db(weights[a], scheme), weight_sqnr_db(weights[b], scheme)),
            _spread(_input_ranges(original[b], pair.depthwise, channels)),
            _spread(_input_ranges(weights[b], pair.depthwise, channels))))
    return EqualizationResult(result, tuple(reports), skipped, sweeps)
