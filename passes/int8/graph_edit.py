"""Small edits of an ONNX graph shared by the int8 methods that rewrite the model (SmoothQuant, the outlier
split, cross-layer equalization, bias correction, GELU fusion, the QDQ folds): reading and adding initializers,
dropping the ones nothing reads any more, and unused names.

A name is made unique by appending ``_`` until nothing in the graph uses it (deterministic, so the same
model always gets the same names)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from graphopt import large


def initializer_array(init: onnx.TensorProto) -> np.ndarray:
    """The values of ``init``, also when its bytes are detached in graphopt's weight store (large models,
    :mod:`graphopt.large`): a copy of that one tensor gets its bytes injected, the model is left as it is."""
    if init.data_location != onnx.TensorProto.EXTERNAL:
        return numpy_helper.to_array(init)
    holder = onnx.ModelProto()
    holder.graph.initializer.add().CopyFrom(init)
    large.inject(holder, {init.name})
    return numpy_helper.to_array(holder.graph.initializer[0])


def drop_unused_initializers(graph: onnx.GraphProto) -> None:
    """Remove the initializers that no node reads and that are neither a graph input nor a graph output
    (left behind by edits)."""
    read = ({name for node in graph.node for name in node.input} | {i.name for i in graph.input}
            | {o.name for o in graph.output})
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def other_input(node: onnx.NodeProto, name: str) -> str | None:
    """The input of a two-input node that is not ``name`` (``None`` when ``name`` is not one of its inputs)."""
    if len(node.input) != 2 or name not in node.input:
        return None
    return node.input[1] if node.input[0] == name else node.input[0]


def bias_add(graph: onnx.GraphProto, node: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
             channels: int) -> tuple[onnx.NodeProto, int] | None:
    """The ``Add`` that alone reads ``node``'s output (not a graph output) and adds a constant of ``channels``
    values, its last dim ``channels`` (a layer's bias): ``(add, index of the constant)``, else ``None``."""
    output = node.output[0]
    readers = [n for n in graph.node if output in n.input]
    if len(readers) != 1 or readers[0].op_type != "Add" or output in {o.name for o in graph.output}:
        return None
    add = readers[0]
    for index in (0, 1):
        const = inits.get(add.input[index])
        if const is not None and add.input[1 - index] == output and \
                int(np.prod(const.dims)) == channels and const.dims and const.dims[-1] == channels:
            return add, index
    return None


def new_initializer(graph: onnx.GraphProto, inits: dict[str, onnx.TensorProto], base: str,
                     value: np.ndarray) -> str:
    """Add ``value`` as a new initializer (a unique name near ``base``); returns the name. The old one is
    left for the graph's cleanup when nothing reads it any more."""
    name = base
    while name in inits:
        name += "_"
    value = np.asarray(value)
    tensor = numpy_helper.from_array(value.astype(np.float32) if value.dtype.kind == "f" else value, name)
    graph.initializer.append(tensor)
    inits[name] = tensor
    return name


def unique_tensor_name(graph: onnx.GraphProto, base: str) -> str:
    """A tensor name near ``base`` that no node, initializer or graph input uses yet."""
    taken = {name for node in graph.node for name in (*node.input, *node.output)}
    taken |= {init.name for init in graph.initializer} | {i.name for i in graph.input}
    name = base
    while name in taken:
        name += "_"
    return name


def unique_node_name(graph: onnx.GraphProto, base: str) -> str:
    """A node name near ``base`` that no node uses yet."""
    taken = {node.name for node in graph.node}
    name = base
    while name in taken:
        name += "_"
    return name
