"""Empirical bias correction (Nagel et al. 2019, §4.2): fold the shift each quantized layer adds to its
output mean back into its bias.

Quantizing a layer ``y = W·x + b`` to ``ỹ = W̃·x̃ + b`` (``W̃``, ``x̃`` its weights and input after
quantize → dequantize) changes the output by ``ε = W̃·x̃ − W·x``. Rounding errors are not zero-mean per
channel (``W̃ − W`` is fixed for the whole data set, and clipping ``x`` removes one tail), so
``E[ε_c] ≠ 0``: every output channel ``c`` is shifted, and the shifts add up through the network. The
correction is ``b'_c = b_c − E[ε_c]``.

Measured, not modelled: the QDQ model from onnxruntime's quantizer gets, for each quantized Conv / Gemm /
MatMul whose data input is quantized, a float twin that reads the same activation *before* its
QuantizeLinear (``x``, as the quantized model computes it) with the float weights and bias. One streaming
run over the calibration data gives per output channel (the channel axis: 1 for Conv, the last for Gemm
/ MatMul; means over the batch and every other axis, equal weight per batch)

    shift_c = E[ỹ_c − y_c],    E[(ỹ_c − y_c)²],    E[y_c²]

so each layer's own shift is measured on the inputs it really gets, independent of the layers before it
(a MatMul whose bias is the ``Add`` after it is measured after that Add, where its correction goes)
(where the quantizer removed a Relu / Clip ahead of the layer — its output range clips instead — the twin
applies it again).
The biases of the float model are corrected (a Conv without a bias gets one; a Gemm without ``C`` gets
one; a MatMul is corrected in the constant of the ``Add`` that follows it, when there is one that only it
feeds and that holds one value per output channel), and the model is quantized again with the same
ranges. The report gives each corrected layer's output SQNR ``10·log10(E[y²]/E[(ỹ − y)²])`` and its mean
|shift| relative to the output's RMS, before and after (the second from one more run).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt import large
from graphopt.calibration import stream_tensors
from graphopt.data import DataSet
from graphopt.passes.int8.graph_edit import (
    bias_add,
    drop_unused_initializers,
    initializer_array,
    new_initializer,
    unique_node_name,
    unique_tensor_name,
)
from graphopt.passes.int8.scheme import graph_links
from graphopt.verify import sqnr_db

CORRECTED_OPS = ("Conv", "Gemm", "MatMul")
FUSED_ACTIVATIONS = ("Relu", "Clip", "LeakyRelu")
"""Activations onnxruntime's QDQ quantizer may remove after a Conv (re-applied for the float twin)."""
PREFIX = "__bias_corr"


@dataclasses.dataclass(frozen=True)
class LayerShift:
    name: str
    shift: np.ndarray
    """``E[ỹ_c − y_c]`` per output channel."""
    error_power: float
    """``E[(ỹ − y)²]`` over every channel."""
    signal_power: float
    """``E[y²]``."""

    @property
    def sqnr_db(self) -> float:
        return sqnr_db(self.signal_power, self.error_power)

    @property
    def relative_shift(self) -> float:
        """Mean ``|shift_c|`` over channels, relative to the output's RMS."""
        return float(np.abs(self.shift).mean() / max(np.sqrt(self.signal_power), 1e-30))


@dataclasses.dataclass
class _Target:
    name: str
    node: onnx.NodeProto  # in the quantized model
    activation: str  # the float tensor its input QuantizeLinear reads
    axes: list[int]


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)


def _targets(quantized: onnx.ModelProto, float_model: onnx.ModelProto, layers: Iterable[str]) -> list[_Target]:
    producers, _ = graph_links(quantized.graph)
    wanted = set(layers)
    inits = {i.name for i in float_model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(float_model)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in inferred.graph.value_info
             if vi.type.tensor_type.HasField("shape")}
    ranks.update({vi.name: len(vi.type.tensor_type.shape.dim) for vi in inferred.graph.output
                  if vi.type.tensor_type.HasField("shape")})
    float_nodes = {n.name: n for n in float_model.graph.node}
    found = []
    for node in quantized.graph.node:
        if node.name not in wanted or node.op_type not in CORRECTED_OPS or node.name not in float_nodes:
            continue
        original = float_nodes[node.name]
        if len(original.input) < 2 or any(name and name not in inits for name in original.input[1:]):
            continue  # a weight or bias computed at run time (e.g. a Gemm adding an activation): not a layer bias
        if node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute):
            continue
        dq = producers.get(node.input[0])
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue  # its input stays float: only the weights are quantized (not measured here)
        if node.op_type == "Conv":
            rank = len(next(i for i in float_model.graph.initializer if i.name == original.input[1]).dims)
            axes = [0, *range(2, rank)]
        elif node.op_type == "Gemm":
            axes = [0]
        else:
            rank = ranks.get(original.output[0])
            if not rank:
                continue
            axes = list(range(rank - 1))
        found.append(_Target(node.name, node, q.input[0], axes))
    return found


def _same_tensor(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], tensor: onnx.TensorProto) -> str:
    """A copy of ``tensor`` under a new name in ``graph``: a weight detached in graphopt's store (large models)
    stays a placeholder of the same bytes, nothing is copied into the proto."""
    name = unique_tensor_name(graph, f"{PREFIX}_{tensor.name}")
    copy = graph.initializer.add()
    copy.CopyFrom(tensor)
    copy.name = name
    inits[name] = copy
    return name


def _reduce_mean(graph: onnx.GraphProto, opset: int, tensor: str, axes: list[int], out: str) -> onnx.NodeProto:
    if opset >= 18:
        axes_name = unique_tensor_name(graph, out + "_axes")
        graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
        return helper.make_node("ReduceMean", [tensor, axes_name], [out], keepdims=0, name=unique_node_name(graph, out))
    return helper.make_node("ReduceMean", [tensor], [out], axes=axes, keepdims=0, name=unique_node_name(graph, out))


def measure_shifts(quantized: onnx.ModelProto, float_model: onnx.ModelProto, data: DataSet, layers: Iterable[str],
                   batch_size: int = 8) -> dict[str, LayerShift]:
    """Per layer (module docstring): its own output shift per channel, error and signal power."""
    store = large.active_store()
    if store is not None and large.placeholders(float_model):  # a large model: the quantizer's proto holds the
        observer = large.detach(large.from_proto(quantized), store)  # quantized weights, the skeleton does not
    else:
        observer = onnx.ModelProto()
        observer.CopyFrom(quantized)
    graph = observer.graph
    inits = {i.name: i for i in float_model.graph.initializer}
    targets = _targets(observer, float_model, layers)
    if not targets:
        return {}
    opset = _opset(observer)
    float_nodes = {n.name: n for n in float_model.graph.node}
    graph_inits = {i.name: i for i in graph.initializer}
    outputs: dict[str, tuple[str, str, str]] = {}
    float_producers, _ = graph_links(float_model.graph)
    quantized_producers, _ = graph_links(graph)
    for target in targets:
        original = float_nodes[target.name]
        activation = target.activation
        before, now = float_producers.get(activation), quantized_producers.get(activation)
        if before is not None and before.op_type in FUSED_ACTIVATIONS and (now is None or now.op_type != before.op_type):
            # onnxruntime's quantizer drops a Relu / Clip after a Conv (the output range does its clipping) and
            # the Conv writes the activation's name: apply it again for the float twin
            fused = unique_tensor_name(graph, f"{PREFIX}_{target.name}_act")
            extra = [_same_tensor(graph, graph_inits, inits[name]) if name else "" for name in before.input[1:]]
            again = helper.make_node(before.op_type, [activation, *extra], [fused], name=unique_node_name(graph, fused))
            again.attribute.extend(before.attribute)
            graph.node.append(again)
            activation = fused
        inputs = [activation]
        inputs += [_same_tensor(graph, graph_inits, inits[name]) if name else "" for name in original.input[1:]]
        reference = unique_tensor_name(graph, f"{PREFIX}_{target.name}_ref")
        twin = helper.make_node(original.op_type, inputs, [reference], name=unique_node_name(graph, f"{PREFIX}_{target.name}"))
        twin.attribute.extend(original.attribute)
        graph.node.append(twin)
        measured = target.node.output[0]
        biased = _throughbias_add(graph, graph_inits, float_model.graph, inits, target, original, reference)
        if biased is not None:
            measured, reference = biased
        diff = unique_tensor_name(graph, f"{PREFIX}_{target.name}_diff")
        diff2 = unique_tensor_name(graph, f"{PREFIX}_{target.name}_diff2")
        ref2 = unique_tensor_name(graph, f"{PREFIX}_{target.name}_ref2")
        names = tuple(unique_tensor_name(graph, f"{PREFIX}_{target.name}_{kind}") for kind in ("shift", "err", "pow"))
        graph.node.extend([
            helper.make_node("Sub", [measured, reference], [diff], name=unique_node_name(graph, diff)),
            helper.make_node("Mul", [diff, diff], [diff2], name=unique_node_name(graph, diff2)),
            helper.make_node("Mul", [reference, reference], [ref2], name=unique_node_name(graph, ref2)),
        ])
        graph.node.extend([_reduce_mean(graph, opset, source, target.axes, out)
                           for source, out in zip((diff, diff2, ref2), names)])
        outputs[target.name] = names
    wanted = [name for names in outputs.values() for name in names]
    sums: dict[str, np.ndarray] = {}
    batches = [0]

    def consume(batch: dict[str, np.ndarray]) -> None:
        batches[0] += 1
        for name in wanted:
            value = batch[name].astype(np.float64)
            sums[name] = value if name not in sums else sums[name] + value

    stream_tensors(observer, data, wanted, consume, batch_size=batch_size, description="bias correction: measuring")
    count = max(batches[0], 1)
    return {layer: LayerShift(layer, sums[shift] / count, float(np.mean(sums[err]) / count),
                              float(np.mean(sums[power]) / count))
            for layer, (shift, err, power) in outputs.items()}


def _throughbias_add(graph: onnx.GraphProto, graph_inits: dict[str, onnx.TensorProto], float_graph: onnx.GraphProto,
                      float_inits: dict[str, onnx.TensorProto], target: _Target, original: onnx.NodeProto,
                      reference: str) -> tuple[str, str] | None:
    """For a MatMul corrected in the bias ``Add`` after it: ``(quantized Add output, twin + original bias)``.

    The correction goes into that Add's constant, so the layer is measured after it: the quantized side
    adds the constant the model being measured holds (corrected or not), the float twin the float model's.
    ``None`` for other layers, or when either graph lacks the Add (then the MatMul output is measured)."""
    if original.op_type != "MatMul" or original.input[1] not in float_inits:
        return None
    channels = int(float_inits[original.input[1]].dims[-1])
    in_float = bias_add(float_graph, original, float_inits, channels)
    in_quantized = bias_add(graph, target.node, graph_inits, channels)
    if in_float is None or in_quantized is None:
        return None
    add, index = in_float
    bias = _same_tensor(graph, graph_inits, float_inits[add.input[index]])
    out = unique_tensor_name(graph, f"{PREFIX}_{target.name}_ref_biased")
    graph.node.append(helper.make_node("Add", [reference, bias], [out], name=unique_node_name(graph, out)))
    return in_quantized[0].output[0], out


def apply_shifts(float_model: onnx.ModelProto, shifts: dict[str, LayerShift]) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``float_model`` with ``b' = b − shift`` for each layer (module docstring); the corrected layers."""
    result = onnx.ModelProto()
    result.CopyFrom(float_model)
    graph = result.graph
    inits = {i.name: i for i in graph.initializer}
    corrected = []
    for node in list(graph.node):
        layer = shifts.get(node.name)
        if layer is None or not np.all(np.isfinite(layer.shift)):
            continue
        shift = layer.shift.astype(np.float32)
        if node.op_type in ("Conv", "Gemm"):
            channels = len(shift)
            beta = next((a.f for a in node.attribute if a.name == "beta"), 1.0) if node.op_type == "Gemm" else 1.0
            if beta == 0:
                continue
            if len(node.input) > 2 and node.input[2]:
                if node.input[2] not in inits:
                    continue
                bias = initializer_array(inits[node.input[2]]).astype(np.float32)
                if bias.size not in (1, channels):
                    continue
                new = np.broadcast_to(bias.reshape(-1), (channels,)) - shift / beta
                node.input[2] = new_initializer(graph, inits, node.input[2] + "_bc", new)
            else:
                name = new_initializer(graph, inits, node.name + "_bias_bc", -shift / beta)
                if len(node.input) > 2:
                    node.input[2] = name
                else:
                    node.input.append(name)
            corrected.append(node.name)
        elif node.op_type == "MatMul":
            found = bias_add(graph, node, inits, len(shift))
            if found is None:
                continue
            add, index = found
            const = initializer_array(inits[add.input[index]]).astype(np.float32)
            add.input[index] = new_initializer(graph, inits, add.input[index] + "_bc",
                                                (const.reshape(-1) - shift).reshape(const.shape))
            corrected.append(node.name)
    drop_unused_initializers(graph)
    return result, corrected


def report(before: dict[str, LayerShift], after: dict[str, LayerShift], corrected: list[str]) -> dict:
    rows = [{"name": name, "sqnr_before_db": round(before[name].sqnr_db, 2),
             "sqnr_after_db": round(after[name].sqnr_db, 2) if name in after else None,
             "mean_shift_before": round(before[name].relative_shift, 5),
             "mean_shift_after": round(after[name].relative_shift, 5) if name in after else None}
            for name in corrected]
    gains = [r["sqnr_after_db"] - r["sqnr_before_db"] for r in rows if r["sqnr_after_db"] is not None
             and np.isfinite(r["sqnr_after_db"]) and np.isfinite(r["sqnr_before_db"])]
    moved = [r["mean_shift_before"] for r in rows]
    changed = (f"{len(rows)} layer bias(es) corrected"
               + (f"; mean |shift| {np.median(moved):.4f} of the output RMS (median) before, "
                  f"{np.median([r['mean_shift_after'] for r in rows if r['mean_shift_after'] is not None]):.4f} after; "
                  f"output SQNR {np.median(gains):+.2f} dB median, {max(gains):+.2f} dB most" if rows and gains else "")
               if rows else "no quantized layer with a measurable input to correct")
    return {"method": "bias-correction", "changed": changed, "layers": rows}
