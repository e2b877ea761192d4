"""``MatMul`` + bias ``Add`` on a batched input written as ``Reshape → Gemm → Reshape`` before quantizing
for onnxruntime's CPU provider (the rewrite onnxsim's ``fuse_matmul_add_bias_into_gemm_batched`` makes,
for the layers it leaves out).

onnxruntime runs a quantized ``Gemm`` as one ``QGemm`` (int8 GEMM, bias and scales inside). A quantized
``MatMul`` followed by its bias ``Add`` runs as ``MatMulIntegerToFloat`` plus a float ``Add`` — and when the
input shapes are static, onnxruntime's ``MatMulAddFusion`` turns the pair into a *float* ``Gemm`` fed by
``DequantizeLinear`` nodes: measured on MiniLM-L6 int8 with its inputs fixed to 4×64 (onnxruntime 1.31,
1 thread), the six attention-output layers that onnxsim had left as MatMul + Add made the model 1.23×
slower than the same file with symbolic input dims. Written as a Gemm they quantize to ``QGemm``
whatever the shapes.

The rule (``y = x·W + b`` with ``x`` of rank ≥ 3): a MatMul chosen for quantization whose weight ``W`` is a
constant ``K×N`` matrix and whose output is read only by an ``Add`` of a constant with ``N`` values
(``b``), neither a graph output, becomes

    x₂ = Reshape(x, [−1, K]);  y₂ = Gemm(x₂, W, b);  y = Reshape(y₂, Concat(Shape(x)[:−1], [N]))

exact (the same sums; the Gemm keeps the MatMul's name, so exclusions and reports still find it). A rank-2
``x`` becomes the Gemm alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from graphopt.passes.int8.graph_edit import (
    bias_add,
    drop_unused_initializers,
    initializer_array,
    unique_node_name,
    unique_tensor_name,
)

MIN_OPSET = 13


@dataclasses.dataclass
class Batched:
    model: onnx.ModelProto
    layers: list[str]

    def report(self) -> dict:
        changed = (f"{len(self.layers)} MatMul + bias Add pair(s) written as Gemm (onnxruntime runs them as QGemm)"
                   if self.layers else "no MatMul + bias Add pair to write as Gemm")
        return {"method": "batched-gemm", "changed": changed, "layers": [{"name": n} for n in self.layers]}


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
    return {vi.name: len(vi.type.tensor_type.shape.dim) for vi in infos if vi.type.tensor_type.HasField("shape")}


def batch_gemms(model: onnx.ModelProto, nodes: Iterable[str]) -> Batched:
    """A copy of ``model`` with the rewrite of the module docstring applied to the MatMuls in ``nodes``."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    opset = next((o.version for o in result.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        return Batched(result, [])
    graph = result.graph
    wanted = set(nodes)
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    ranks = _ranks(result)
    done: list[str] = []
    for matmul in list(graph.node):
        if matmul.op_type != "MatMul" or matmul.name not in wanted or matmul.domain not in ("", "ai.onnx"):
            continue
        weight = inits.get(matmul.input[1])
        rank = ranks.get(matmul.input[0], 0)
        if weight is None or len(weight.dims) != 2 or rank < 2 or matmul.output[0] in outputs:
            continue
        k, n = (int(d) for d in weight.dims)
        found = bias_add(graph, matmul, inits, n)
        if found is None or inits[found[0].input[found[1]]].data_type != onnx.TensorProto.FLOAT:
            continue
        add, bias = found[0], found[0].input[found[1]]
        bias_vector = bias
        if list(inits[bias].dims) != [n]:
            bias_vector = unique_tensor_name(graph, f"{bias}_vector")
            values = initializer_array(inits[bias]).reshape(n)
            graph.initializer.append(numpy_helper.from_array(values.astype(np.float32), bias_vector))
        position = list(graph.node).index(matmul)
        new_nodes = _rewrite(graph, matmul, weight.name, bias_vector, add.output[0], k, n, rank)
        graph.node.remove(add)
        graph.node.remove(matmul)
        for offset, node in enumerate(new_nodes):
            graph.node.insert(position + offset, node)
        done.append(matmul.name)
    if done:
        drop_unused_initializers(graph)
    return Batched(result, done)


def _rewrite(graph: onnx.GraphProto, matmul: onnx.NodeProto, weight: str, bias: str, output: str,
             k: int, n: int, rank: int) -> list[onnx.NodeProto]:
    """The nodes replacing ``matmul`` and its bias Add (the Gemm named as the MatMul, writing ``output``)."""
    x = matmul.input[0]
    if rank == 2:
        return [helper.make_node("Gemm", [x, weight, bias], [output], name=matmul.name)]

    def constant(suffix: str, values: list[int]) -> str:
        name = unique_tensor_name(graph, f"{matmul.name}_{suffix}")
        graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    flat_in = unique_tensor_name(graph, f"{matmul.name}_input_2d")
    flat_out = unique_tensor_name(graph, f"{matmul.name}_output_2d")
    shape = unique_tensor_name(graph, f"{matmul.name}_input_shape")
    leading = unique_tensor_name(graph, f"{matmul.name}_leading_dims")
    target = unique_tensor_name(graph, f"{matmul.name}_output_shape")
    return [
        helper.make_node("Reshape", [x, constant("flat", [-1, k])], [flat_in],
                         name=unique_node_name(graph, f"{matmul.name}_flatten")),
        helper.make_node("Gemm", [flat_in, weight, bias], [flat_out], name=matmul.name),
        helper.make_node("Shape", [x], [shape], name=unique_node_name(graph, f"{matmul.name}_shape")),
        helper.make_node("Slice", [shape, constant("start", [0]), constant("end", [-1])], [leading],
                         name=unique_node_name(graph, f"{matmul.name}_leading")),
        helper.make_node("Concat", [leading, constant("channels", [n])], [target], axis=0,
                         name=unique_node_name(graph, f"{matmul.name}_target")),
        helper.make_node("Reshape", [flat_out, target], [output], name=unique_node_name(graph, f"{matmul.name}_unflatten")),
    ]
