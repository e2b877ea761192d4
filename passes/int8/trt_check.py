"""Static check that a QDQ graph follows TensorRT's explicit-quantization rules (no GPU needed).

TensorRT builds an int8 engine from Q/DQ nodes only when (TensorRT developer guide, "Explicit
quantization"; rules for INT8):

1. the model imports opset ≥ 13 (per-channel ``axis`` on Q/DQ);
2. every zero point is **int8 and all zeros** (symmetric); uint8 is not supported;
3. every scale is a constant float32/float16 tensor, finite and > 0;
4. only float tensors are quantized (no int32/int64 inputs to QuantizeLinear) and no block
   quantization (``block_size``) is used for int8;
5. per-channel scales (non-scalar) appear only on **constant weights** (DQ of an int8 initializer,
   or Q→DQ of a float initializer) and their ``axis`` is the output-channel axis of the consumer:
   Conv 0, ConvTranspose 1, MatMul last, Gemm 0 with ``transB=1`` else 1;
6. a QuantizeLinear output feeds only DequantizeLinear nodes with the same scale and zero point
   (a Q→DQ pair), and is not a graph output;
7. a Conv / ConvTranspose / Gemm / MatMul whose activation input comes from a DQ also takes its
   weight through a DQ (otherwise TensorRT runs the layer in float).

:func:`check_trt_qdq` returns one line per violation (empty = deployable).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt.passes.int8.scheme import graph_links

FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
SCALE_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16}
WEIGHTED = {"Conv": 1, "ConvTranspose": 1, "Gemm": 1, "MatMul": 1}
"""Op type → index of its weight input."""


def _attribute(node: onnx.NodeProto, name: str, default=None):
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {init.name: init for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output:
            value = _attribute(node, "value")
            if isinstance(value, onnx.TensorProto):
                tensors[node.output[0]] = value
    return tensors


def _weight_axis(consumer: onnx.NodeProto, rank: int) -> int | None:
    if consumer.op_type == "Conv":
        return 0
    if consumer.op_type == "ConvTranspose":
        return 1
    if consumer.op_type == "MatMul":
        return rank - 1
    if consumer.op_type == "Gemm":
        return 0 if _attribute(consumer, "transB", 0) else 1
    return None


def check_trt_qdq(model: onnx.ModelProto) -> list[str]:
    """Violations of TensorRT's explicit-quantization rules (see the module docstring)."""
    problems: list[str] = []
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        problems.append(f"opset {opset} < 13: TensorRT needs opset ≥ 13 for Q/DQ with per-channel axes")
    constants = _constants(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    types.update({name: t.data_type for name, t in constants.items()})
    producers, consumers = graph_links(model.graph)
    graph_outputs = {o.name for o in model.graph.output}

    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        label = f"{node.op_type} '{node.name or node.output[0]}'"
        problems += _check_scale_zero_point(node, label, constants)
        if _attribute(node, "block_size", 0):
            problems.append(f"{label}: block quantization is not supported for int8 by TensorRT")
        source = node.input[0]
        if node.op_type == "QuantizeLinear":
            if types.get(source) is not None and types[source] not in FLOAT_TYPES:
                problems.append(f"{label}: quantizes '{source}' of type "
                                f"{onnx.TensorProto.DataType.Name(types[source])}; only float tensors can be quantized")
            output = node.output[0]
            if output in graph_outputs:
                problems.append(f"{label}: its int8 output is a graph output; end the graph with a DequantizeLinear")
            for consumer in consumers.get(output, []):
                if consumer.op_type != "DequantizeLinear":
                    problems.append(f"{label}: feeds {consumer.op_type} '{consumer.name}'; a Q must feed only DQ nodes")
                elif not _same_params(node, consumer, constants):
                    problems.append(f"{label}: the DQ '{consumer.name}' after it uses a different scale/zero point")
        else:
            is_weight = source in constants or (
                source in producers and producers[source].op_type == "QuantizeLinear"
                and producers[source].input[0] in constants)
            if source in constants and constants[source].data_type != onnx.TensorProto.INT8:
                problems.append(f"{label}: constant input '{source}' is "
                                f"{onnx.TensorProto.DataType.Name(constants[source].data_type)}; TensorRT needs int8 weights")
            problems += _check_axis(node, label, constants, consumers, is_weight)

    for node in model.graph.node:
        if node.op_type not in WEIGHTED or len(node.input) <= WEIGHTED[node.op_type]:
            continue
        act, weight = node.input[0], node.input[WEIGHTED[node.op_type]]
        act_quantized = act in producers and producers[act].op_type == "DequantizeLinear"
        weight_quantized = weight in producers and producers[weight].op_type == "DequantizeLinear"
        if act_quantized and not weight_quantized and weight in constants:
            problems.append(f"{node.op_type} '{node.name}': quantized input but float weight '{weight}'; "
                            "TensorRT runs it in float (add a DQ on the int8 weight)")
    return problems


def _scale_and_zero_point(node, constants):
    scale = constants.get(node.input[1]) if len(node.input) > 1 else None
    zero_point = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return scale, zero_point


def _check_scale_zero_point(node, label, constants) -> list[str]:
    problems = []
    scale, zero_point = _scale_and_zero_point(node, constants)
    if scale is None:
        problems.append(f"{label}: scale '{node.input[1] if len(node.input) > 1 else '?'}' is not a constant")
    else:
        if scale.data_type not in SCALE_TYPES:
            problems.append(f"{label}: scale is {onnx.TensorProto.DataType.Name(scale.data_type)}; use float32")
        values = numpy_helper.to_array(scale).astype(np.float64)
        if not np.all(np.isfinite(values)) or np.any(values <= 0):
            problems.append(f"{label}: scale must be finite and > 0")
    if len(node.input) > 2 and node.input[2]:
        if zero_point is None:
            problems.append(f"{label}: zero point '{node.input[2]}' is not a constant")
        elif zero_point.data_type != onnx.TensorProto.INT8:
            problems.append(f"{label}: zero point is {onnx.TensorProto.DataType.Name(zero_point.data_type)}; "
                            "TensorRT int8 needs int8 (symmetric) quantization")
        elif np.any(numpy_helper.to_array(zero_point) != 0):
            problems.append(f"{label}: non-zero zero point; TensorRT needs symmetric quantization")
    elif node.op_type == "QuantizeLinear":
        problems.append(f"{label}: no zero point, so it quantizes to uint8; TensorRT needs int8 (give an int8 zero point)")
    return problems


def _same_params(q: onnx.NodeProto, dq: onnx.NodeProto, constants) -> bool:
    def values(node):
        scale, zero_point = _scale_and_zero_point(node, constants)
        s = numpy_helper.to_array(scale) if scale is not None else node.input[1]
        z = numpy_helper.to_array(zero_point) if zero_point is not None else None
        return s, z

    (s1, z1), (s2, z2) = values(q), values(dq)
    if isinstance(s1, str) or isinstance(s2, str):
        return q.input[1] == dq.input[1]
    same_zero = (z1 is None and z2 is None) or (z1 is not None and z2 is not None and np.array_equal(z1, z2))
    return np.array_equal(s1, s2) and same_zero


def _check_axis(node, label, constants, consumers, is_weight) -> list[str]:
    scale, _ = _scale_and_zero_point(node, constants)
    if scale is None or len(scale.dims) == 0 or int(np.prod(scale.dims)) == 1:
        return []
    if not is_weight:
        return [f"{label}: per-channel scale on an activation; TensorRT supports per-channel only on weights"]
    source = node.input[0]
    weight = constants.get(source)
    rank = len(weight.dims) if weight is not None else 2
    axis = _attribute(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    problems = []
    for consumer in consumers.get(node.output[0], []):
        expected = _weight_axis(consumer, rank)
        if expected is not None and axis != expected:
            problems.append(f"{label}: per-channel axis {axis} but {consumer.op_type} '{consumer.name}' needs "
                            f"axis {expected} (output channels)")
    return problems
