"""The int8 scheme per target, and the adapter that has onnxruntime.quantization write the QDQ graph.

Quantization mapping (ONNX ``QuantizeLinear``): ``q = saturate(round(x / s) + z)``,
``x ≈ (q − z)·s``. From a calibrated range ``[lo, hi]`` (widened to contain 0):

* asymmetric uint8 activations: ``s = (hi − lo) / 255``, ``z = round(−lo / s)``;
* symmetric int8: ``s = max(|lo|, |hi|) / 127``, ``z = 0``;
* per-channel symmetric int8 weights: one ``s`` per output channel, ``s_c = max|W_c| / 127``.

Scheme per target:

* ``cpu`` — **uint8 activations (asymmetric), int8 weights (symmetric, per-channel)**. onnxruntime's
  CPU kernels (QLinearConv, MatMulInteger / QLinearMatMul) run u8·s8 on the VNNI ``vpdpbusd`` path;
  s8 activations are handled by a slower path (measured on this 2-core AVX-512 VNNI machine for the
  224×224 ResNet-18-style CNN: see tools/bench_calibration.py and the int8 report). Without VNNI
  the weights use 7 bits (``reduce_range``) so u8·s8 pair sums cannot saturate 16-bit lanes.
  Quantized ops: weighted ops, residual Adds and the data-movement / pooling ops between them so
  int8 tensors flow from one conv to the next, and sigmoid gates (SiLU ``x·σ(x)``, squeeze-excitation
  ``x·σ(s)``: the ``Sigmoid`` and the ``Mul`` reading it), which onnxruntime runs as ``QLinearSigmoid`` (a
  256-entry table) and ``QLinearMul``; LayerNorm, Softmax, GELU pieces stay in float.
* ``trt`` / ``cuda`` — **symmetric int8 activations and weights, per-channel weights, no zero
  points, no bias quantization**, Q/DQ only on the *inputs* of Conv / ConvTranspose / Gemm / MatMul
  and of residual Adds (TensorRT fuses a DQ→Conv→(Add)→Q chain; it propagates the scales through
  pooling / ReLU / reshapes itself and runs everything else, Softmax and LayerNorm included, in
  float). This is TensorRT's explicit-quantization layout (checked by ``trt_check``).

Add nodes with a constant input (bias adds) are never quantized: only residual Adds, whose two
inputs are both activations. Flow ops and residual Adds are quantized only when a quantized
weighted op reads their int8 output (:func:`keep_int8_flow`). Embedding lookups (a ``Gather`` on a
constant table of at least :data:`EMBEDDING_MIN_BYTES`, ``cpu`` scheme) are quantized whatever reads
them: the table is stored in 8 bits and onnxruntime gathers the 8-bit rows and dequantizes only those.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import onnx

from graphopt import large
from graphopt.inspection import is_quant_op
from graphopt.passes.int8.graph_edit import drop_unused_initializers
from graphopt.target import Target

WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
CPU_FLOW_OPS = ("Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize",
                "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Gather")
"""Ops quantized on CPU besides the weighted ones so int8 tensors flow between convs (ORT has
int8 kernels or drops the Q/DQ pair around them)."""
CPU_GATE_OPS = ("Sigmoid", "Mul")
"""A sigmoid gate on CPU: ``Sigmoid`` and a ``Mul`` reading a Sigmoid output (SiLU ``x·σ(x)``, squeeze-excitation
``x·σ(s)``); other Muls stay float. Like the flow ops they are kept only between quantized layers.
Measured (``tools/bench.py``, onnxruntime 1.31, batch 4, AVX-512 VNNI; latency × fp32 at 1 / 2 threads; README's
int8 section): EfficientNet-224 (49 gates) 0.82 / 0.99 with its SiLUs in float (one QuickGelu each,
:mod:`.methods.silu_fusion`) → 0.72 / 0.90 as QLinearSigmoid + QLinearMul, cosine to fp32 0.9708 → 0.9705;
MobileViT-256 (29) 0.72 / 0.88 → 0.73 / 0.70, cosine 0.9874 → 0.9863 (top-1 agreement with fp32 on its 16 eval
images 13 → 11, as ORT's hand-tuned quantize_static; the zoo models have seeded random weights, whose near-tied
logits flip easily)."""
EMBEDDING_MIN_BYTES = 1 << 20
"""A constant ``Gather`` table at least this big is stored in int8 even when only float ops read the
lookup (:func:`keep_int8_flow`). A lookup of an 8-bit table adds only the table's own rounding;
measured on MiniLM-L6: the 30522×384 word-embedding table in 8 bits takes the file from 64 to 29 MB
(0.71 → 0.32 of fp32) for a mean cosine 0.99254 → 0.99215, no slower. Smaller tables (its position
and token-type embeddings, 0.8 MB and 3 KB) save nothing worth their rounding (0.99119 with them)."""
@dataclasses.dataclass(frozen=True)
class Int8Scheme:
    """Everything target-dependent about how a model is quantized."""

    target: str
    activation_type: str
    """``"uint8"`` or ``"int8"``."""
    activation_symmetric: bool
    per_channel: bool
    reduce_range: bool
    op_types: tuple[str, ...]
    outputs_not_quantized: tuple[str, ...] = ()
    """Op types whose outputs get no Q/DQ of their own (TensorRT layout)."""
    quantize_bias: bool = True
    default_method: str = "minmax"
    weight_type: str = "int8"

    def describe(self) -> str:
        act = f"{'u8' if self.activation_type == 'uint8' else 's8'} activations " + (
            "symmetric" if self.activation_symmetric else "asymmetric")
        weights = "s8 weights " + ("per-channel" if self.per_channel else "per-tensor") + (
            " (7-bit)" if self.reduce_range else "")
        return f"{act}, {weights}"

    def ort_extra_options(self) -> dict:
        options = {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": True,
            "QuantizeBias": self.quantize_bias,
            "OpTypesToExcludeOutputQuantization": list(self.outputs_not_quantized),
        }
        return options


def scheme_for(target: Target, *, activations: str = "auto", per_channel: bool = True) -> Int8Scheme:
    """The scheme for ``target`` (see the module docstring); ``activations`` overrides the signedness."""
    if target.kind == "cpu":
        act = "uint8" if activations == "auto" else activations
        return Int8Scheme("cpu", act, activation_symmetric=act == "int8", per_channel=per_channel,
                          reduce_range=not target.cpu_vnni,
                          op_types=(*WEIGHTED_OPS, "Add", *CPU_FLOW_OPS, *CPU_GATE_OPS),
                          default_method="percentile")
    act = "int8" if activations == "auto" else activations
    return Int8Scheme(target.kind, act, activation_symmetric=True, per_channel=per_channel, reduce_range=False,
                      op_types=(*WEIGHTED_OPS, "Add"), outputs_not_quantized=(*WEIGHTED_OPS, "Add"),
                      quantize_bias=False, default_method="percentile")


def is_quantized(model: onnx.ModelProto) -> list[str]:
    """Op types showing the model is already quantized (empty when it is not); the one rule
    :func:`graphopt.inspection.is_quant_op` that ``inspect`` and the pruning pass use too."""
    found = {n.op_type for n in model.graph.node if is_quant_op(n.op_type)}
    return sorted(found)


def constant_names(model: onnx.ModelProto) -> set[str]:
    names = {init.name for init in model.graph.initializer}
    names |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    return names


def float_weight_nodes(model: onnx.ModelProto) -> list[str]:
    """Weighted nodes (Conv/ConvTranspose/Gemm/MatMul) with a float constant weight — what int8 speeds up."""
    floats = {init.name for init in model.graph.initializer
              if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)}
    found = []
    for node in model.graph.node:
        if node.op_type in WEIGHTED_OPS and len(node.input) > 1 and node.input[1] in floats:
            found.append(node.name)
    return found


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names (``<op>_<index>``): exclusion lists and reports name nodes."""
    used = {n.name for n in model.graph.node if n.name}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def quantizable_nodes(model: onnx.ModelProto, scheme: Int8Scheme, exclude_nodes: Iterable[str] = (),
                      exclude_op_types: Iterable[str] = ()) -> list[str]:
    """Names of the nodes the scheme quantizes, in graph order (bias Adds and exclusions removed)."""
    constants = constant_names(model)
    producers, _ = graph_links(model.graph)
    excluded_nodes, excluded_ops = set(exclude_nodes), set(exclude_op_types)
    chosen = []
    for node in model.graph.node:
        if node.op_type not in scheme.op_types or node.op_type in excluded_ops or node.name in excluded_nodes:
            continue
        if node.op_type == "Add" and any(i in constants for i in node.input):
            continue
        if node.op_type == "Mul" and not any(i in producers and producers[i].op_type == "Sigmoid" for i in node.input):
            continue  # only the Mul of a sigmoid gate
        if node.op_type == "Gather" and (not node.input or node.input[0] not in constants):
            continue  # only embedding tables (constant data) are worth quantizing
        chosen.append(node.name)
    return keep_int8_flow(model, chosen)


def embedding_lookups(model: onnx.ModelProto) -> set[str]:
    """Names of ``Gather`` nodes on a constant float table of at least :data:`EMBEDDING_MIN_BYTES`."""
    tables = {init.name: init for init in model.graph.initializer}
    found = set()
    for node in model.graph.node:
        table = tables.get(node.input[0]) if node.op_type == "Gather" and node.input else None
        if table is not None and table.data_type == onnx.TensorProto.FLOAT and \
                4 * int(np.prod(table.dims, dtype=np.int64)) >= EMBEDDING_MIN_BYTES:
            found.add(node.name)
    return found


def keep_int8_flow(model: onnx.ModelProto, chosen: list[str]) -> list[str]:
    """``chosen`` without the flow ops and residual Adds whose int8 output no quantized op reads.

    A flow op (Reshape, Transpose, Relu, pooling, …) or residual Add is worth quantizing only when
    int8 tensors flow *through* it into a quantized weighted op (directly or via other kept flow
    ops): then onnxruntime runs the chain in int8 and drops the Q/DQ pairs between. When every
    reader is a float op (LayerNorm, Softmax, a bias Add, a graph output), its Q/DQ pairs only add
    rounding — and force the Q/DQ on the producer's output to stay. Embedding lookups
    (:func:`embedding_lookups`) are kept like weighted ops: they store a table. Measured on MiniLM-L6: the
    Reshape after the FFN output Gemm carries BERT's outlier channels (range up to ~200) and
    quantizing it alone drops the mean cosine from 0.981 to 0.901; the residual Adds (read by
    LayerNorm) and the attention-mask Add (range down to −3.4e38, read by Softmax) are the same
    case. Decided backwards over the graph (nodes are in topological order).
    """
    selected = set(chosen)
    weighted = {n.name for n in model.graph.node if n.name in selected and n.op_type in WEIGHTED_OPS}
    weighted |= embedding_lookups(model) & selected
    readers = {name: [n.name for n in nodes] for name, nodes in graph_links(model.graph)[1].items()}
    kept = set(weighted)
    for node in reversed(model.graph.node):
        if node.name not in selected or node.name in weighted:
            continue
        if any(reader in kept for output in node.output for reader in readers.get(output, [])):
            kept.add(node.name)
    return [name for name in chosen if name in kept]


def low_resolution_layers(model: onnx.ModelProto, nodes: Iterable[str], sqnr_db: Mapping[str, float],
                          min_db: float) -> dict[str, float]:
    """Weighted layers whose activation input quantizes to an SQNR below ``min_db`` → that SQNR.

    A heavy-tailed activation (a few huge values, most near 0) needs a range so wide that the
    8-bit step swamps the typical value: the layer loses more than int8 gains. Measured on
    MiniLM-L6 (percentile ranges, u8): the inputs of the first three FFN output Gemms (GELU
    outputs in [−0.17, 17…24] with rms ≈ 0.2) sit at 19–20 dB, every other layer at ≥ 23 dB;
    keeping those three in float raises the mean cosine of ``last_hidden_state`` from 0.980 to
    0.993. A 224×224 CNN's post-ReLU inputs sit near 40 dB.
    """
    wanted = set(nodes)
    constants = constant_names(model)
    found: dict[str, float] = {}
    for node in model.graph.node:
        if node.name not in wanted or node.op_type not in WEIGHTED_OPS:
            continue
        values = [sqnr_db[name] for name in node.input[:2] if name and name not in constants and name in sqnr_db]
        if values and min(values) < min_db:
            found[node.name] = min(values)
    return found


def tensors_to_calibrate(model: onnx.ModelProto, nodes: Iterable[str]) -> list[str]:
    """Float activations (not constants) read or written by ``nodes``."""
    wanted = set(nodes)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    constants = constant_names(model)
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    names: list[str] = []
    for node in model.graph.node:
        if node.name not in wanted:
            continue
        for name in list(node.input) + list(node.output):
            if name and name not in constants and types.get(name) in floats:
                names.append(name)
    return list(dict.fromkeys(names))


def quantize_qdq(model: onnx.ModelProto, scheme: Int8Scheme, ranges: Mapping[str, tuple[float, float]],
                 nodes: Iterable[str]) -> onnx.ModelProto:
    """The QDQ model onnxruntime.quantization writes for ``nodes`` with graphopt's ``ranges``.

    ``model`` is copied first (the quantizer edits its input in place).
    """
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import add_infer_metadata, update_opset_version

    nodes = list(nodes)
    working = onnx.ModelProto()
    working.CopyFrom(model)
    working = onnx.shape_inference.infer_shapes(working)
    act_type = QuantType.QUInt8 if scheme.activation_type == "uint8" else QuantType.QInt8
    weight_type = QuantType.QInt8
    working = update_opset_version(working, weight_type, act_type)
    data = {name: TensorData(lowest=np.array(lo, dtype=np.float32), highest=np.array(hi, dtype=np.float32))
            for name, (lo, hi) in ranges.items()}
    tensors = TensorsData(CalibrationMethod.MinMax, data)
    if not nodes:
        return working
    # Shapes are inferred above: say so in onnxruntime's own marker, or the quantizer saves the whole
    # model to a temporary folder and loads it back to infer them again (a copy of every weight, and
    # impossible for detached weights). Then the bytes of what it quantizes (graphopt.large).
    add_infer_metadata(working)
    chosen = set(nodes)
    large.inject(working, {name for node in working.graph.node if node.name in chosen for name in node.input})
    quantizer = QDQQuantizer(working, scheme.per_channel, scheme.reduce_range, weight_type, act_type, tensors,
                             nodes, [], list(scheme.op_types), scheme.ort_extra_options())
    quantizer.quantize_model()
    quantizer.model.topological_sort()  # what quantize_static does before saving
    result = quantizer.model.model
    drop_output_qdq_into_float(result, set(nodes))
    if scheme.target == "cpu":
        float_readers_skip_rounding(result, set(nodes))
        shape_readers_skip_dequantize(result)
    return result


FLOAT_OUTPUT_OK = ("MatMul", "Gemm", "Add")
"""Ops onnxruntime runs from int8 inputs to a float output at full speed (MatMulIntegerToFloat,
QGemm) or whose output precision matters most (residual stream before LayerNorm)."""


def graph_links(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], dict[str, list[onnx.NodeProto]]]:
    """``(producers, consumers)``: the node writing each tensor, and the nodes reading it (in order)."""
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producers, consumers


def bypass_qdq(source: onnx.NodeProto | None, q: onnx.NodeProto, dqs: list[onnx.NodeProto],
               consumers: dict[str, list[onnx.NodeProto]], outputs: set[str]) -> bool:
    """Let the readers of ``source → Q → DQ…`` read ``source``'s float output directly; whether it did.

    A DQ output that is a graph output keeps its name: ``source`` writes it, and the other readers
    of ``source``'s output follow the rename. ``source`` is ``None`` when the Q reads a graph input,
    which cannot be renamed: then a DQ writing a graph output leaves the pair in place (``False``).
    The Q/DQ nodes are left for the caller to drop."""
    plain = q.input[0]
    if source is None and any(dq.output[0] in outputs for dq in dqs):
        return False
    for dq in dqs:
        if dq.output[0] in outputs:
            source.output[list(source.output).index(plain)] = dq.output[0]
            for reader in consumers.get(plain, []):
                reader.input[:] = [dq.output[0] if n == plain else n for n in reader.input]
            plain = dq.output[0]
    for dq in dqs:
        for reader in consumers.get(dq.output[0], []):
            reader.input[:] = [plain if n == dq.output[0] else n for n in reader.input]
    return True


def drop_output_qdq_into_float(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Remove the Q→DQ pair on outputs of MatMul/Gemm/Add that only feed float ops or graph outputs.

    onnxruntime quantizes every output of a quantized node; when nothing downstream consumes int8
    (Softmax, LayerNorm, a bias Add, the model output) the pair only adds rounding error. Returns
    the number of pairs removed.
    """
    graph = model.graph
    producers, consumers = graph_links(graph)
    outputs = {o.name for o in graph.output}
    removed, drop = 0, []
    for q in graph.node:
        if q.op_type != "QuantizeLinear" or q.input[0] not in producers:
            continue
        source = producers[q.input[0]]
        if source.op_type not in FLOAT_OUTPUT_OK or source.name not in quantized:
            continue
        if q.input[0] in outputs or len(consumers.get(q.input[0], [])) != 1:
            continue
        dqs = consumers.get(q.output[0], [])
        if not dqs or any(d.op_type != "DequantizeLinear" for d in dqs):
            continue
        downstream = [c for d in dqs for c in consumers.get(d.output[0], [])]
        if any(c.name in quantized for c in downstream):
            continue
        bypass_qdq(source, q, dqs, consumers, outputs)
        drop += [q, *dqs]
        removed += 1
    for node in drop:
        graph.node.remove(node)
    if removed:
        drop_unused_initializers(graph)
    return removed


def float_readers_skip_rounding(model: onnx.ModelProto, quantized: set[str]) -> int:
    """Let float ops read the float tensor of a ``X → Q → DQ`` pair instead of its rounded copy.

    onnxruntime's quantizer sends every reader of a quantized tensor through the same DQ, so an op
    that runs in float anyway (a residual Add read by LayerNorm, a Gelu, a Softmax) computes on
    ``DQ(Q(X))`` and carries the 8-bit rounding error of ``X`` forward for nothing: it costs a
    DequantizeLinear and gains no int8 kernel. Only where ``X`` itself is computed in float (its producer
    reads no DQ output — a LayerNorm, or a Reshape of one that the quantizer listed with the quantized
    ops — or ``X`` is a graph input): the output of an op that reads DQs runs in int8 and exists in float
    only as the DQ (an int8 Gather, a QLinearConv). Readers in ``quantized`` (and Q/DQ nodes) keep the DQ.
    Measured on MiniLM-L6 written as MatMul + Add (no Gemm reshapes): the residual stream read the
    rounded LayerNorm output and the mean cosine of ``last_hidden_state`` fell from 0.992 to 0.983.
    DQs left without readers, then Qs left without readers, are removed. Returns the number of
    readers rewired. (``cpu`` scheme only: TensorRT's explicit-quantization layout is left as
    onnxruntime writes it.)
    """
    graph = model.graph
    producers, consumers = graph_links(graph)
    outputs = {o.name for o in graph.output}
    rewired = 0
    for dq in list(graph.node):
        q = producers.get(dq.input[0]) if dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear" or dq.output[0] in outputs:
            continue
        source = producers.get(q.input[0])
        if source is not None and (source.op_type == "DequantizeLinear" or (source.name in quantized and any(
                producers.get(name) is not None and producers[name].op_type == "DequantizeLinear"
                for name in source.input))):
            continue  # runs in int8: its float output exists only as this DQ (a Gather of an int8 table)
        for reader in consumers.get(dq.output[0], []):
            if reader.name in quantized or reader.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            reader.input[:] = [q.input[0] if name == dq.output[0] else name for name in reader.input]
            rewired += 1
    if rewired:
        _remove_unread_qdq(graph)
    return rewired


def _remove_unread_qdq(graph: onnx.GraphProto) -> None:
    """Drop the DequantizeLinear nodes whose output nothing reads, then the QuantizeLinear nodes left so,
    then the initializers only they read."""
    outputs = {o.name for o in graph.output}
    for op_type in ("DequantizeLinear", "QuantizeLinear"):
        read = {name for node in graph.node for name in node.input} | outputs
        for node in [n for n in graph.node if n.op_type == op_type and n.output[0] not in read]:
            graph.node.remove(node)
    drop_unused_initializers(graph)


def shape_readers_skip_dequantize(model: onnx.ModelProto) -> int:
    """Let ``Shape`` / ``Size`` nodes that read a ``DequantizeLinear`` output read its quantized input.

    The shape is the same, and onnxruntime would otherwise dequantize the whole tensor just to read its
    dimensions (a Reshape's computed target shape, e.g. the one :mod:`.batched_gemm` writes, reading an
    int8 activation). DQs left without readers are removed. Returns the number of readers rewired."""
    graph = model.graph
    _, consumers = graph_links(graph)
    rewired = 0
    for dq in [n for n in graph.node if n.op_type == "DequantizeLinear"]:
        for reader in consumers.get(dq.output[0], []):
            if reader.op_type in ("Shape", "Size") and reader.domain in ("", "ai.onnx"):
                reader.input[0] = dq.input[0]
                rewired += 1
    if rewired:
        _remove_unread_qdq(graph)
    return rewired
