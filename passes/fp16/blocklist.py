"""Which nodes stay in fp32 when a model is converted to fp16 / bf16.

Four sources, each reported separately:

1. **Required** (:data:`REQUIRED_FP32_OPS`): ops whose float inputs are not activations
   (quantization scales of ``QuantizeLinear``/``DequantizeLinear`` so int8 QDQ stays exactly as
   the int8 pass wrote it; Resize-era ``Upsample``), ops whose fp16 result is wrong by
   construction (``Range``/``CumSum`` accumulate past fp16's 11-bit integer range) and ops
   without fp16 support (ai.onnx.ml, ``NonMaxSuppression``, ``RoiAlign``, random generators),
   ``BitCast`` (reinterprets bits), ``MeanVarianceNormalization`` (onnx cannot type-check its function
   body, so a converted one cannot be proved) and the sequence ops (:data:`SEQUENCE_OPS`). With them, the
   nodes that feed a rounding op (:func:`rounding_cone`: an fp16 error before it moves the result a whole
   step) and the max subtraction of a written-out softmax (:func:`max_subtractions`: cancellation).
2. **Data** (:func:`overflow_nodes`): with calibration or evaluation data the fp32 model runs once
   (streaming, :func:`graphopt.calibration.collect_ranges`) and every node with an input, output
   or weight whose max |x| exceeds ``65504 / safety_margin`` stays fp32. The margin covers inputs
   larger than those seen and the growth inside a node (a sum of n terms can be n× its inputs).
3. **Default** (:data:`DEFAULT_OVERFLOW_OPS`, fp16 only, used when no data is given): ops that
   overflow fp16 on ordinary inputs — ``Pow`` (the squared deviation inside a hand-written
   LayerNorm), ``Exp`` (e^x > 65504 for x > 11.1), sums and products of many elements
   (``ReduceSum``, ``ReduceSumSquare``, ``ReduceL2``, ``ReduceProd``, ``ReduceLogSum(Exp)``).
4. **CPU kernels** (:func:`nodes_without_cpu_kernel`, ``--target cpu``): onnxruntime's CPU provider
   is asked, per (domain, op, opset, input and output types), whether it has a native kernel.
   ORT silently wraps ops it lacks in fp32 Casts (its InsertCastTransformer), so the probe builds a
   one-node model, lets ORT write its optimized graph and reports "no kernel" when ORT added
   Casts or refused the node. Answers are cached per process and onnxruntime version.

bf16 keeps fp32's exponent range, so sources 2 and 3 do not apply to it.
"""

from __future__ import annotations

import functools
import os
import tempfile

import onnx
from onnx import helper

from graphopt.calibration import TensorRange
from graphopt.passes.fp16.typecheck import FLOAT_TYPES, elem_types, has_subgraph, iter_graphs

FP16_MAX = 65504.0

REQUIRED_FP32_OPS: frozenset[str] = frozenset({
    # int8 QDQ and quantized ops: float inputs are scales that must stay fp32
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "QLinearMatMul",
    "MatMulInteger", "ConvInteger",
    # accumulate indices / running sums past fp16's exact integer range (2048)
    "Range", "CumSum",
    # no fp16 variants in practice
    "NonMaxSuppression", "RoiAlign", "RandomUniformLike", "Upsample",
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer", "FeatureVectorizer",
    "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor", "Normalizer", "OneHotEncoder",
    "SVMClassifier", "SVMRegressor", "Scaler", "TreeEnsemble", "TreeEnsembleClassifier", "TreeEnsembleRegressor",
    "ZipMap",
    # BitCast reinterprets its input's bits: their width is the meaning
    "BitCast",
    # onnx's type inference fails on its function body (the original's too): a converted one cannot be proved
    "MeanVarianceNormalization",
})

SEQUENCE_OPS: frozenset[str] = frozenset({
    "SequenceConstruct", "SequenceInsert", "SequenceAt", "SequenceErase", "SequenceLength", "SequenceEmpty",
    "SplitToSequence", "ConcatFromSequence", "SequenceMap"})
"""Ops on sequence values: kept fp32. onnxruntime's float16 converter retypes a sequence's tensors
inconsistently (the result does not load), so a model that mixes them with float compute is refused, and one
made of them alone stays fp32."""

DEFAULT_OVERFLOW_OPS: frozenset[str] = frozenset({
    "Pow", "Exp", "ReduceSum", "ReduceSumSquare", "ReduceL2", "ReduceProd", "ReduceLogSum", "ReduceLogSumExp",
})


def overflow_threshold(safety_margin: float) -> float:
    """Largest max |x| a tensor may reach and still be computed in fp16: ``65504 / margin``."""
    return FP16_MAX / max(safety_margin, 1.0)


def overflow_nodes(proto: onnx.ModelProto, ranges: dict[str, TensorRange], threshold: float) -> dict[str, str]:
    """Nodes of the main graph touching a tensor (or weight) with max |x| > ``threshold``.

    Returns ``{node name: tensor name that exceeded}``.
    """
    from graphopt.large import max_abs

    big = {name for name, r in ranges.items() if r.count and r.max_abs > threshold}
    for init in proto.graph.initializer:
        if init.data_type in FLOAT_TYPES and init.name not in big and max_abs(init) > threshold:
            big.add(init.name)
    found: dict[str, str] = {}
    for node in proto.graph.node:
        hit = next((t for t in list(node.input) + list(node.output) if t in big), None)
        if hit is not None:
            found[node.name] = hit
    return found


ROUNDING_OPS: frozenset[str] = frozenset({"Round", "Floor", "Ceil"})
"""Ops that turn a float into a whole number: an fp16 error before them moves the result a whole step."""


def rounding_cone(proto: onnx.ModelProto) -> list[str]:
    """Main-graph nodes that are, or feed (directly or not), a :data:`ROUNDING_OPS` node: kept fp32, since
    fp16's relative error of 2⁻¹¹ in ``x/scale`` changes ``round(x/scale)`` by one wherever it lies near a
    half step (a hand-written quantizer computed in fp16 gives other integers than in fp32)."""
    producer = {out: node for node in proto.graph.node for out in node.output if out}
    cone: dict[str, None] = {}
    stack = [n for n in proto.graph.node if n.op_type in ROUNDING_OPS]
    while stack:
        node = stack.pop()
        if node.name in cone:
            continue
        cone[node.name] = None
        stack += [producer[name] for name in node.input if name in producer]
    return list(cone)


def max_subtractions(proto: onnx.ModelProto) -> list[str]:
    """``Sub(x, ReduceMax(x))`` pairs (a softmax written out op by op), both nodes: kept fp32. The difference
    is small where ``x`` is large, and fp16 rounds ``x`` to a spacing of ``|x|·2⁻¹⁰`` (8 at 10⁴) before
    subtracting, so the small values the softmax depends on are lost — whatever the data's range says."""
    producer = {out: node for node in proto.graph.node for out in node.output if out}
    found: list[str] = []
    for node in proto.graph.node:
        if node.op_type != "Sub" or len(node.input) < 2:
            continue
        peak = producer.get(node.input[1])
        if peak is not None and peak.op_type == "ReduceMax" and peak.input and peak.input[0] == node.input[0]:
            found += [peak.name, node.name]
    return found


def op_nodes(proto: onnx.ModelProto, op_types: frozenset[str] | set[str]) -> list[str]:
    """Names of the nodes (all graphs) whose op type is in ``op_types``."""
    return [n.name for g in iter_graphs(proto.graph) for n in g.node if n.op_type in op_types]


def nodes_without_cpu_kernel(proto: onnx.ModelProto, low: int) -> dict[str, str]:
    """Nodes that read or write a ``low`` tensor and have no native onnxruntime CPU kernel for it.

    ``proto`` is the converted model. Returns ``{node name: op_type}``. Control-flow nodes
    (If/Loop/Scan) are type-agnostic and never reported; their bodies are probed.
    """
    types = elem_types(proto)
    opsets = {entry.domain or "": entry.version for entry in proto.opset_import}
    missing: dict[str, str] = {}
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            if has_subgraph(node) or node.op_type == "Constant":
                continue
            in_types = tuple(types.get(n, 0) if n else 0 for n in node.input)
            out_types = tuple(types.get(n, 0) if n else 0 for n in node.output)
            if low not in in_types and low not in out_types:
                continue
            if 0 in out_types:
                continue  # an output of unknown type cannot be probed; the full session decides
            domain = "" if node.domain == "ai.onnx" else node.domain
            version = opsets.get(domain, opsets.get("ai.onnx", 1))
            attrs = tuple(a.SerializeToString() for a in node.attribute)
            if not has_native_cpu_kernel(domain, node.op_type, version, in_types, out_types, attrs):
                missing[node.name] = node.op_type
    return missing


@functools.lru_cache(maxsize=4096)
def has_native_cpu_kernel(domain: str, op_type: str, opset: int, in_types: tuple[int, ...],
                          out_types: tuple[int, ...], attributes: tuple[bytes, ...] = ()) -> bool:
    """Ask onnxruntime whether its CPU provider runs this node natively (see the module docstring)."""
    return _probe(domain, op_type, opset, in_types, out_types, attributes)


def _probe(domain, op_type, opset, in_types, out_types, attributes) -> bool:
    import onnxruntime as ort

    from graphopt.engines.ort import session_options

    node = onnx.NodeProto(op_type=op_type, domain=domain, name="probe")
    node.input.extend([f"i{k}" if t else "" for k, t in enumerate(in_types)])
    node.output.extend([f"o{k}" for k in range(len(out_types))])
    for raw in attributes:
        attr = onnx.AttributeProto()
        attr.ParseFromString(raw)
        node.attribute.append(attr)
    inputs = [helper.make_tensor_value_info(f"i{k}", t, None) for k, t in enumerate(in_types) if t]
    outputs = [helper.make_tensor_value_info(f"o{k}", t, None) for k, t in enumerate(out_types)]
    opsets = [helper.make_opsetid(domain, opset)]
    if domain:
        opsets.append(helper.make_opsetid("", 17))
    model = helper.make_model(helper.make_graph([node], "probe", inputs, outputs), opset_imports=opsets)
    model.ir_version = 8
    casts_before = 1 if op_type == "Cast" else 0
    with tempfile.TemporaryDirectory() as folder:
        options = session_options(optimization="disable")
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        try:
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            text = str(exc)
            # "no kernel" answers; any other failure (e.g. shape-dependent checks) is not ours to judge
            return not ("NOT_IMPLEMENTED" in text or "Could not find an implementation" in text)
        optimized = onnx.load(options.optimized_model_filepath)
    return sum(1 for n in optimized.graph.node if n.op_type == "Cast") == casts_before


def isolated_low_nodes(proto: onnx.ModelProto, low: int, candidates: set[str]) -> dict[str, str]:
    """Low-precision nodes of the main graph that gain nothing: every low input arrives through a
    ``Cast(fp32 → low)``, every consumer of every output is a ``Cast(→ fp32)``, and the node has no
    weights (so keeping it fp32 costs no size). Keeping them fp32 removes two or more Casts each.

    Only nodes named in ``candidates`` are considered. Returns ``{node name: op_type}``.
    """
    types = elem_types(proto)
    weights = {i.name for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in proto.graph.output}

    def cast_to(node, elem) -> bool:
        return node is not None and node.op_type == "Cast" and any(a.name == "to" and a.i == elem for a in node.attribute)

    found = {}
    for node in proto.graph.node:
        if node.name not in candidates or has_subgraph(node):
            continue
        low_in = [n for n in node.input if n and types.get(n) == low]
        low_out = [n for n in node.output if n and types.get(n) == low]
        if not (low_in or low_out) or any(n in weights for n in low_in):
            continue
        inputs_ok = all(cast_to(producers.get(n), low) and types.get(producers[n].input[0]) == onnx.TensorProto.FLOAT
                        for n in low_in)
        outputs_ok = all(n not in outputs and consumers.get(n) and all(cast_to(c, onnx.TensorProto.FLOAT)
                                                                      for c in consumers[n]) for n in low_out)
        if inputs_ok and outputs_ok:
            found[node.name] = node.op_type
    return found
