"""Type checks and Cast clean-up for low-precision (fp16 / bf16) graphs.

After a converter rewrites a graph, three kinds of damage are common: nodes whose inputs mix
float types, Cast nodes whose ``to`` disagrees with the declared type of their output, and
chains of Casts that do nothing useful. This module finds and repairs them.

Rules:

* **Mixed float inputs** (:func:`fix_mixed_float_inputs`): for every node, the inputs that one
  schema type parameter binds (``T`` of ``Add(A: T, B: T)``) must share one float type. When
  they do not, the odd ones get a Cast to the node's intended type (fp32 for nodes kept in fp32,
  the low type otherwise, provided the schema allows it). Inputs with a fixed type in the schema
  (``Resize`` scales are ``tensor(float)``) are cast to that type.
* **Redundant Casts** (:func:`remove_redundant_casts`):
  ``Cast(x: T, to=T)`` is dropped; a round trip ``x: A → Cast(to=B) → Cast(to=A)`` is replaced by
  ``x`` when B represents every value of A (fp16 → fp32 → fp16) or when one of the two Casts was
  inserted by the conversion (fp32 → fp16 → fp32 between two fp32 nodes: dropping it only removes
  a rounding step); two Casts of one tensor to one type become one; a Cast of a constant is folded
  into a new constant of the target type when the constant has no other user or at most
  :data:`FOLD_LIMIT` elements.
* **Type check** (:func:`check_types`): strict onnx type inference; every Cast's ``to`` equals the
  declared type of its output; ``Resize`` scales are float32 and roi a float type, ``Range``
  inputs share one type, ``ConstantOfShape``'s input is int64 and its ``value`` matches its
  declared output type; subgraphs (``If``/``Loop``/``Scan``) are checked the same way, and the
  two branches of an ``If`` produce the same types.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto
from onnx_ir.passes import common as ir_common

FLOAT = TensorProto.FLOAT
FLOAT16 = TensorProto.FLOAT16
BFLOAT16 = TensorProto.BFLOAT16
FLOAT_TYPES = frozenset({FLOAT, FLOAT16, BFLOAT16, TensorProto.DOUBLE})
LOW_TYPES = frozenset({FLOAT16, BFLOAT16})
FOLD_LIMIT = 4096
"""Largest constant (elements) whose Cast is folded even when the constant has other users."""

_TYPE_STR = {FLOAT: "tensor(float)", FLOAT16: "tensor(float16)", BFLOAT16: "tensor(bfloat16)",
             TensorProto.DOUBLE: "tensor(double)"}


def type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


def iter_graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every subgraph below it (If branches, Loop/Scan bodies), depth first."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from iter_graphs(sub)


def has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def strip_value_info(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy without intermediate ``value_info`` (declared types that a rewrite may have left stale)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for graph in iter_graphs(copy.graph):
        del graph.value_info[:]
    return copy


def infer(proto: onnx.ModelProto, strict: bool = False) -> onnx.ModelProto:
    """A shape-inferred copy of ``proto``; non-strict inference starts from no declared intermediate
    types, strict inference also checks them (and raises on any type error)."""
    if strict:
        return onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    return onnx.shape_inference.infer_shapes(strip_value_info(proto))


def elem_types(proto: onnx.ModelProto, inferred: bool = False) -> dict[str, int]:
    """Element type of every tensor name in every graph (inputs, initializers, value_info, outputs)."""
    source = proto if inferred else infer(proto)
    types: dict[str, int] = {}
    for graph in iter_graphs(source.graph):
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            types[init.name] = init.data_type
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                for attr in node.attribute:
                    if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
                        types[node.output[0]] = attr.t.data_type
    return types


def opset_of(proto: onnx.ModelProto, domain: str = "") -> int:
    for entry in proto.opset_import:
        if entry.domain in ((domain, "ai.onnx") if domain == "" else (domain,)):
            return entry.version
    return 1


def _schema(node: onnx.NodeProto, opset: int):
    try:
        return onnx.defs.get_schema(node.op_type, opset, node.domain)
    except Exception:
        return None


def _formal(params, index: int):
    """The formal parameter of a schema for input/output ``index`` (variadic tails repeat the last)."""
    if not params:
        return None
    if index < len(params):
        return params[index]
    last = params[-1]
    return last if last.option == onnx.defs.OpSchema.FormalParameterOption.Variadic else None


def schema_allows(node: onnx.NodeProto, opset: int, low: int, types: dict[str, int]) -> bool:
    """True when the node's schema (at ``opset``) lets every float input/output be ``low``.

    Unknown schemas (custom domains) answer True: the runtime probe decides for those.
    """
    schema = _schema(node, opset)
    if schema is None:
        return True
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    wanted = _TYPE_STR[low]
    for params, names in ((schema.inputs, node.input), (schema.outputs, node.output)):
        for index, name in enumerate(names):
            if not name or types.get(name) not in FLOAT_TYPES:
                continue
            formal = _formal(params, index)
            if formal is None:
                continue
            if formal.type_str not in allowed:
                continue  # a fixed type (Resize scales): stays as it is, not converted
            if wanted not in allowed[formal.type_str]:
                return False
    return True


def drop_duplicate_producers(proto: onnx.ModelProto) -> int:
    """Remove nodes that re-produce a tensor an identical node already produces.

    The float16 converters insert one ``Cast`` per blocked consumer, named after the tensor, so a
    tensor feeding two fp32 nodes gets two Casts writing the same name (invalid SSA). Identical
    duplicates (same op, inputs, attributes) are dropped; any other clash raises ``ValueError``.
    Returns the number removed; ``proto`` is changed in place.
    """
    removed = 0
    for graph in iter_graphs(proto.graph):
        producers: dict[str, onnx.NodeProto] = {}
        kept = []
        for node in graph.node:
            first = next((producers[o] for o in node.output if o and o in producers), None)
            if first is not None:
                same = (first.op_type == node.op_type and list(first.input) == list(node.input)
                        and list(first.output) == list(node.output)
                        and [a.SerializeToString() for a in first.attribute] == [a.SerializeToString() for a in node.attribute])
                if not same:
                    raise ValueError(f"nodes '{first.name}' and '{node.name}' both produce '{node.output[0]}'")
                removed += 1
                continue
            producers.update({o: node for o in node.output if o})
            kept.append(node)
        if removed:
            del graph.node[:]
            graph.node.extend(kept)
    return removed


def fix_mixed_float_inputs(proto: onnx.ModelProto, fp32_nodes: set[str], low: int) -> int:
    """Insert Casts so every schema type parameter binds one float type (see module docstring).

    Returns the number of Casts inserted. ``proto`` is changed in place.
    """
    opset = opset_of(proto)
    types = elem_types(proto)
    inserted = 0
    for graph in iter_graphs(proto.graph):
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            schema = _schema(node, opset)
            if schema is not None:
                inserted += _fix_node(graph, node, schema, types, low if node.name not in fp32_nodes else FLOAT,
                                      new_nodes)
            new_nodes.append(node)
        if len(new_nodes) != len(graph.node):
            del graph.node[:]
            graph.node.extend(new_nodes)
    return inserted


def _fix_node(graph, node, schema, types, intended: int, out: list[onnx.NodeProto]) -> int:
    allowed = {c.type_param_str: set(c.allowed_type_strs) for c in schema.type_constraints}
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for index, name in enumerate(node.input):
        formal = _formal(schema.inputs, index)
        if name and formal is not None and types.get(name) in FLOAT_TYPES:
            groups[formal.type_str].append(index)
    inserted = 0
    for type_str, indices in groups.items():
        if type_str in allowed:
            present = {types[node.input[i]] for i in indices}
            if len(present) <= 1:
                continue
            target = intended if _TYPE_STR.get(intended) in allowed[type_str] else FLOAT
        else:  # a fixed type such as Resize's scales: tensor(float)
            fixed = [t for t, s in _TYPE_STR.items() if s == type_str]
            if not fixed:
                continue
            target = fixed[0]
        for i in indices:
            if types[node.input[i]] != target:
                source = node.input[i]
                cast_out = f"{source}__to_{type_name(target)}__{node.name}"
                out.append(onnx.helper.make_node("Cast", [source], [cast_out], to=target, name=f"{cast_out}__cast"))
                types[cast_out] = target
                node.input[i] = cast_out
                inserted += 1
    return inserted


def _np_dtype(elem_type: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type))


def remove_redundant_casts(model: ir.Model, original_casts: set[str]) -> dict[str, int]:
    """Drop no-op Casts, round trips and duplicates; fold Casts of constants (see module docstring).

    ``model`` must carry inferred types (``Value.dtype``). ``original_casts`` names the Casts that
    were in the model before conversion. Returns counts per kind. Changes ``model`` in place.
    """
    counts = collections.Counter()
    changed = True
    while changed:
        changed = False
        for graph in [model.graph, *_subgraphs(model.graph)]:
            seen: dict[tuple[int, int], ir.Value] = {}
            for node in list(graph):
                if node.op_type != "Cast" or node.domain not in ("", "ai.onnx") or node.inputs[0] is None:
                    continue
                kind = _simplify_cast(graph, node, original_casts, seen)
                if kind:
                    counts[kind] += 1
                    changed = True
        if changed:
            ir_common.RemoveUnusedNodesPass()(model)
    return dict(counts)


def _subgraphs(graph: ir.Graph) -> list[ir.Graph]:
    found = []
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                found.append(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                found.extend(attr.value)
    return found


def _replace(out: ir.Value, replacement: ir.Value) -> bool:
    """Route the users of ``out`` to ``replacement``. A graph output is handed over by name when
    ``replacement`` is a plain intermediate of the same graph (so the output keeps its name)."""
    if out.is_graph_output():
        graph = out.graph
        movable = (graph is not None and replacement.producer() is not None and replacement.graph is graph
                   and not replacement.is_graph_output() and out.producer() is not None)
        if not movable:
            return False
        name = out.name
        index = list(graph.outputs).index(out)
        graph.outputs[index] = replacement
        out.replace_all_uses_with(replacement)
        out.name = f"{name}__replaced"
        replacement.name = name
        return True
    if not out.uses():
        return False
    out.replace_all_uses_with(replacement)
    return True


def _simplify_cast(graph: ir.Graph, node: ir.Node, original: set[str], seen: dict) -> str | None:
    src, out = node.inputs[0], node.outputs[0]
    to = ir.DataType(node.attributes["to"].as_int())
    if src.dtype == to and _replace(out, src):
        return "no-op casts removed"
    key = (id(src), int(to))
    if key in seen and seen[key] is not out and _replace(out, seen[key]):
        return "duplicate casts merged"
    seen.setdefault(key, out)
    producer = src.producer()
    if (producer is not None and producer.op_type == "Cast" and producer.domain in ("", "ai.onnx")
            and producer.inputs[0] is not None and producer.inputs[0].dtype == to):
        middle = ir.DataType(producer.attributes["to"].as_int())
        lossless = _widens(to, middle)
        if (lossless or node.name not in original or producer.name not in original) and _replace(out, producer.inputs[0]):
            return "cast round trips removed"
    constant = _constant_array(src)
    same_graph = src.graph is graph or (producer is not None and producer.graph is graph)
    if constant is not None and same_graph:
        users = len(src.uses())
        if users == 1 or constant.size <= FOLD_LIMIT:
            value = ir.Value(name=f"{src.name}__{to.name.lower()}", type=ir.TensorType(to), shape=src.shape,
                             const_value=ir.tensor(constant.astype(to.numpy())))
            if value.name in graph.initializers:
                value = graph.initializers[value.name]
            else:
                graph.register_initializer(value)
            if _replace(out, value):
                if not src.uses() and src.is_initializer() and not src.is_graph_input():
                    graph.initializers.pop(src.name, None)
                return "constant casts folded"
    return None


def _widens(narrow: ir.DataType, wide: ir.DataType) -> bool:
    """True when every value of ``narrow`` is exactly representable in ``wide``."""
    order = {ir.DataType.FLOAT16: {ir.DataType.FLOAT, ir.DataType.DOUBLE},
             ir.DataType.BFLOAT16: {ir.DataType.FLOAT, ir.DataType.DOUBLE},
             ir.DataType.FLOAT: {ir.DataType.DOUBLE}}
    return narrow == wide or wide in order.get(narrow, set())


def _constant_array(value: ir.Value) -> np.ndarray | None:
    if value.const_value is not None and value.is_initializer() and not value.is_graph_input():
        return value.const_value.numpy()
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return producer.attributes["value"].as_tensor().numpy()
    return None


def check_types(proto: onnx.ModelProto) -> list[str]:
    """Problems found in ``proto`` (empty list = consistent); see the module docstring for the rules."""
    problems: list[str] = []
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        return [f"type inference: {(text[-1] if text else type(exc).__name__)[:240]}"]
    types = elem_types(inferred, inferred=True)
    declared = {}
    for graph in iter_graphs(proto.graph):
        for vi in list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                declared[vi.name] = vi.type.tensor_type.elem_type
    opset = opset_of(proto)
    for graph in iter_graphs(inferred.graph):
        for node in graph.node:
            problems += _node_problems(node, types, declared, opset)
    return problems


def _node_problems(node: onnx.NodeProto, types: dict[str, int], declared: dict[str, int], opset: int) -> list[str]:
    where = f"{node.op_type} '{node.name}'"
    found = []
    ins = list(node.input)
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), None)
        out = node.output[0]
        if out in declared and declared[out] != to:
            found.append(f"{where}: to={type_name(to)} but '{out}' is declared {type_name(declared[out])}")
    elif node.op_type == "Resize":
        scales_index, roi_index = (1, None) if opset <= 10 else (2, 1)
        if len(ins) > scales_index and ins[scales_index] and types.get(ins[scales_index]) != FLOAT:
            found.append(f"{where}: scales must be float32, got {type_name(types.get(ins[scales_index], 0))}")
        if roi_index is not None and len(ins) > roi_index and ins[roi_index] and types.get(ins[roi_index]) not in FLOAT_TYPES:
            found.append(f"{where}: roi must be a float type")
    elif node.op_type == "Range":
        present = {types.get(n) for n in ins if n}
        if len(present) > 1:
            found.append(f"{where}: start/limit/delta have different types {sorted(type_name(t or 0) for t in present)}")
    elif node.op_type == "ConstantOfShape":
        if ins and types.get(ins[0]) not in (None, TensorProto.INT64):
            found.append(f"{where}: input must be int64")
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        out = node.output[0]
        if value is not None and out in declared and declared[out] != value.data_type:
            found.append(f"{where}: value is {type_name(value.data_type)} but '{out}' is declared {type_name(declared[out])}")
    elif node.op_type == "If":
        branches = {a.name: a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH}
        if "then_branch" in branches and "else_branch" in branches:
            then_t = [o.type.tensor_type.elem_type for o in branches["then_branch"].output]
            else_t = [o.type.tensor_type.elem_type for o in branches["else_branch"].output]
            if then_t != else_t:
                found.append(f"{where}: then/else branches output different types")
    return found
