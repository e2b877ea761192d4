"""Transformer activations kept as 2-D ``[tokens, channels]`` rows between their Gemms.

onnxsim writes each ``MatMul`` + bias of a ``[batch, seq, C]`` activation as
``Reshape(x, [−1, C]) → Gemm → Reshape(·, Concat(Shape(x)[:−1], [N]))``, so the row-wise ops between two
Gemms (residual Add, LayerNorm, GELU) run on 3-D tensors and every Gemm pays a flatten, an unflatten and a
Shape → Slice → Concat chain that rebuilds the 3-D shape. On MiniLM-L6 that is about a quarter of the nodes
onnxruntime runs, each with its own dispatch cost.

The rule. A tensor ``v`` of shape ``[d₀, …, d_{r−2}, C]`` (``C`` static) has a *row form*
``rows(v) = Reshape(v, [−1, C])`` (the same values in the same order) and *leading dims* ``lead(v) =
Shape(v)[:−1]``. The pass learns them from the graph, in topological order:

* a flatten ``Reshape(x, [−1, C])`` of a tensor x whose last dim is C gives rows(x) and a new lead;
* an unflatten ``u = Reshape(y, Concat(P, [N]))`` of a 2-D ``[M, N]`` tensor y gives rows(u) = y, lead(u) = P;
  so does ``v = Reshape(a, Concat(P, [C]))`` of any tensor a (rows(v) = ``Reshape(a, [−1, C])``);
* a row-wise op — one that computes each last-axis row alone and keeps the shape: unary elementwise ops,
  LayerNormalization over the last axis, MatMul by a constant ``C×N`` matrix, elementwise binary ops whose
  other inputs are constants varying along the last axis only or tensors with the same lead and C — gets
  ``rows(f(v, …)) = f(rows(v), …)`` and runs on the rows.

Leading dims P are known equal to lead(x) when P is ``Shape(x)[:−1]`` or ``[Shape(x)[0], …, Shape(x)[r−2]]``
(Gather + Unsqueeze) of a tensor x of rank r; two tensors meet in a row-wise binary op only when their leads
are provably the same, so their shapes are equal. Then: ``Reshape(v, [−1, C])`` is rows(v); any other
``Reshape(v, t)`` reads rows(v) instead (same row-major order; not when t has a literal 0, which copies an
input dim); ``Shape(v)`` is ``Concat(lead, [C])`` and ``Shape(v)[:−1]`` is lead, so the per-layer shape chains
of the attention reshapes become one (common-subexpression elimination merges them afterwards); a 3-D
tensor still read elsewhere (a pooling, a graph output's producer) is rebuilt as ``Reshape(rows, Concat(lead, [C]))``.
The rows carry their 2-D shape ``[?, C]``, which tells :mod:`graphopt.passes.residual_sum` (run after this)
to leave their residual Adds alone: onnxruntime fuses SkipLayerNormalization only for 3-D inputs, and the 2-D
Add runs on all threads (MiniLM-L6 int8, 2 threads: 1.5 % faster than as ``Sum``).

The values are the same and each is computed by the same op. The outputs can still differ in the last bits:
onnxruntime fuses a 2-D ``MatMul`` + bias ``Add`` into one ``Gemm`` (it does not for 3-D), which adds the
bias inside the GEMM (MiniLM-L6 fp32: 2.4e-6 max abs. difference on outputs of magnitude ~1). Zero-size
dims aside (a Reshape target copying a 0 dim), the shapes are the original's. A graph whose rewrite would
not sort topologically is left unchanged.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
from onnx_ir.passes import common as ir_common

MIN_OPSET = 13
"""Reshape / Slice / Unsqueeze take their shapes and axes as inputs from opset 13 on."""

UNARY = frozenset({
    "Abs", "Cast", "Ceil", "Clip", "Elu", "Erf", "Exp", "Floor", "Gelu", "HardSigmoid", "HardSwish", "Identity",
    "LeakyRelu", "Log", "Mish", "Neg", "Reciprocal", "Relu", "Round", "Selu", "Sigmoid", "Sign", "Softplus",
    "Sqrt", "Tanh",
})
"""Elementwise ops of one data input (Clip's min / max must be constants)."""
BINARY = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Sum", "Max", "Min"})
"""Elementwise ops of several inputs, broadcasting."""


@dataclasses.dataclass
class _Lead:
    """One proven leading-dims value: ``source`` is the tensor whose ``Shape(·)[:−1]`` it is, or ``tensor``
    a 1-D tensor holding it; ``length`` is its number of dims when known."""
    source: ir.Value | None = None
    tensor: ir.Value | None = None
    length: int | None = None


@dataclasses.dataclass
class _Rows:
    """What the pass knows about a tensor: its lead, its channels C, and how to get its rows."""
    lead: _Lead
    channels: int | None
    """None while unknown: ``Reshape(a, Concat(P, [−1]))``, until a MatMul by a ``C×N`` constant reads it."""
    rows: ir.Value | None = None
    flatten_from: ir.Value | None = None
    """When ``rows`` is still to be built: the tensor whose ``Reshape(·, [−1, C])`` they are."""


def _is_default_domain(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _const(value: ir.Value | None) -> np.ndarray | None:
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _ints(value: ir.Value | None) -> list[int] | None:
    array = _const(value)
    if array is None or array.dtype.kind not in "iu" or array.ndim > 1:
        return None
    return [int(v) for v in array.reshape(-1)]


def _rank(value: ir.Value) -> int | None:
    return len(value.shape) if value.shape is not None else None


def _last_dim(value: ir.Value) -> int | None:
    if value.shape is None or len(value.shape) == 0:
        return None
    last = value.shape[-1]
    return last if isinstance(last, int) else None


class _TokenRows:
    """One run of the rewrite over a graph (see the module docstring)."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.facts: dict[ir.Value, _Rows] = {}
        self.shape_of: dict[ir.Value, _Rows] = {}
        """Shape outputs → the facts of the tensor they measure."""
        self.lead_values: dict[ir.Value, _Lead] = {}
        """1-D tensors proven to hold a lead."""
        self.opaque: dict[ir.Value, _Lead] = {}
        """1-D tensors used as leading dims that nothing relates to another tensor's shape."""
        self.converted: list[ir.Node] = []
        self.shape_nodes: list[tuple[ir.Node, _Rows]] = []
        self.slice_nodes: list[tuple[ir.Node, _Lead]] = []
        self.flattens: list[ir.Node] = []
        """``Reshape(v, [−1, C])`` of a tensor with rows: replaced by the rows."""
        self.reshapes: list[ir.Node] = []
        """Other Reshapes of a tensor with rows: they read the rows instead."""
        self._shape3: dict[tuple[int, int], ir.Value] = {}
        self._lead_tensor: dict[int, ir.Value] = {}
        self._names = 0
        self.flatten_targets = self._flatten_targets()

    # --- analysis -------------------------------------------------------------------------------------

    def _flatten_targets(self) -> dict[ir.Value, ir.Value]:
        """x → the output of a ``Reshape(x, [−1, C])`` with C x's static last dim."""
        found: dict[ir.Value, ir.Value] = {}
        for node in self.graph:
            if node.op_type != "Reshape" or not _is_default_domain(node) or len(node.inputs) < 2:
                continue
            x, target = node.inputs[0], _ints(node.inputs[1])
            if x is None or target is None or len(target) != 2 or target[0] != -1:
                continue
            if (_rank(x) or 0) >= 3 and _last_dim(x) == target[1] and x not in found:
                found[x] = node.outputs[0]
        return found

    def analyse(self) -> None:
        for value in self.graph.inputs:
            self._maybe_source(value)
        for node in self.graph:
            if _is_default_domain(node):
                self._visit(node)
            for output in node.outputs:
                self._maybe_source(output)

    def _maybe_source(self, value: ir.Value) -> None:
        if value in self.facts or value not in self.flatten_targets:
            return
        rank = _rank(value)
        self.facts[value] = _Rows(_Lead(source=value, length=None if rank is None else rank - 1),
                                  _last_dim(value), rows=self.flatten_targets[value])

    def _visit(self, node: ir.Node) -> None:
        op = node.op_type
        if op == "Reshape":
            self._visit_reshape(node)
        elif op == "Shape":
            self._visit_shape(node)
        elif op == "Slice":
            self._visit_slice(node)
        elif op == "LayerNormalization" or op in UNARY or op in BINARY or op == "MatMul":
            self._visit_row_wise(node)

    def _visit_reshape(self, node: ir.Node) -> None:
        if len(node.inputs) < 2 or node.inputs[0] is None or node.inputs[1] is None:
            return
        x, target = node.inputs[0], node.inputs[1]
        known = self.facts.get(x)
        constant = _ints(target)
        if known is not None and known.channels is not None:
            if constant == [-1, known.channels]:
                if node.outputs[0] is not known.rows:  # not the source's own flatten
                    self.flattens.append(node)
            elif self._target_has_no_zero(node):
                self.reshapes.append(node)
            return
        if known is not None:
            return
        parts = self._concat_parts(target)
        if parts is None:
            return
        leading, channels = parts
        lead = self._lead_of(leading)
        if lead is None:
            return
        out = node.outputs[0]
        if _rank(x) == 2 and _last_dim(x) is not None and channels in (-1, _last_dim(x)):
            self.facts[out] = _Rows(lead, _last_dim(x), rows=x)
        else:
            self.facts[out] = _Rows(lead, None if channels == -1 else channels, flatten_from=x)

    def _target_has_no_zero(self, node: ir.Node) -> bool:
        allowzero = node.attributes.get("allowzero")
        if allowzero is not None and allowzero.as_int() == 1:
            return True
        target = node.inputs[1]
        constant = _ints(target)
        if constant is not None:
            return 0 not in constant
        producer = target.producer()
        if producer is None or producer.op_type != "Concat":
            return False
        for part in producer.inputs:
            values = _ints(part)
            if values is not None and 0 in values:
                return False
        return True

    def _concat_parts(self, target: ir.Value) -> tuple[list[ir.Value], int] | None:
        """``Concat(P…, [C])`` → (P, C); C is −1 when the Reshape infers it."""
        producer = target.producer()
        if producer is None or producer.op_type != "Concat" or not _is_default_domain(producer):
            return None
        if len(producer.inputs) < 2 or any(v is None for v in producer.inputs):
            return None
        last = _ints(producer.inputs[-1])
        if last is None or len(last) != 1 or last[0] == 0 or last[0] < -1:
            return None
        return list(producer.inputs[:-1]), last[0]

    def _lead_of(self, parts: list[ir.Value]) -> _Lead | None:
        """The lead the 1-D tensors ``parts`` concatenate to, when proven (or a single opaque tensor)."""
        if len(parts) == 1:
            part = parts[0]
            if part in self.lead_values:
                return self.lead_values[part]
            if _ints(part) is not None:
                return None
            return self.opaque.setdefault(part, _Lead(tensor=part, length=_last_dim(part)))
        lead: _Lead | None = None
        for index, part in enumerate(parts):
            unsqueeze = part.producer()
            if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.inputs) != 2:
                return None
            if _ints(unsqueeze.inputs[1]) != [0]:
                return None
            gather = unsqueeze.inputs[0].producer() if unsqueeze.inputs[0] is not None else None
            if gather is None or gather.op_type != "Gather" or len(gather.inputs) != 2:
                return None
            axis = gather.attributes.get("axis")
            if (axis.as_int() if axis is not None else 0) != 0:
                return None
            position = _const(gather.inputs[1])
            if position is None or position.ndim != 0 or int(position) != index:
                return None
            measured = self.shape_of.get(gather.inputs[0])
            if measured is None or (lead is not None and measured.lead is not lead):
                return None
            lead = measured.lead
        if lead is None or lead.length != len(parts):
            return None
        return lead

    def _visit_shape(self, node: ir.Node) -> None:
        known = self.facts.get(node.inputs[0]) if node.inputs else None
        if known is None or known.channels is None or node.attributes.get("start") is not None or node.attributes.get("end") is not None:
            return
        self.shape_of[node.outputs[0]] = known
        if known.lead.source is not node.inputs[0]:  # a source tensor stays: its Shape is as cheap
            self.shape_nodes.append((node, known))

    def _visit_slice(self, node: ir.Node) -> None:
        inputs = list(node.inputs)
        if len(inputs) < 3 or inputs[0] not in self.shape_of:
            return
        known = self.shape_of[inputs[0]]
        starts, ends = _ints(inputs[1]), _ints(inputs[2])
        axes = _ints(inputs[3]) if len(inputs) > 3 and inputs[3] is not None else [0]
        steps = _ints(inputs[4]) if len(inputs) > 4 and inputs[4] is not None else [1]
        length = known.lead.length
        whole_lead = ends == [-1] or (length is not None and ends == [length])
        if starts == [0] and whole_lead and axes in ([0], [-1]) and steps == [1]:
            lead = known.lead
            self.lead_values[node.outputs[0]] = lead
            shape = inputs[0].producer()
            if lead.tensor is None and shape is not None and shape.op_type == "Shape" and shape.inputs[0] is lead.source:
                lead.tensor = node.outputs[0]  # Shape(source)[:-1] as the graph already computes it
            else:
                self.slice_nodes.append((node, lead))

    def _visit_row_wise(self, node: ir.Node) -> None:
        if len(node.outputs) != 1 and any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
            return
        out = node.outputs[0]
        if out.is_graph_output():
            return
        data = [v for v in node.inputs if v is not None and v in self.facts]
        if not data:
            return
        first = self.facts[data[0]]
        if first.channels is None and node.op_type == "MatMul" and len(data) == 1:
            weight = _const(node.inputs[1])
            if weight is not None and weight.ndim == 2:
                first.channels = int(weight.shape[0])  # the only last dim with which the model runs
        if first.channels is None:
            return
        if any(self.facts[v].lead is not first.lead or self.facts[v].channels != first.channels for v in data):
            return
        channels = self._row_wise_channels(node, first)
        if channels is None:
            return
        self.facts[out] = _Rows(first.lead, channels)
        self.converted.append(node)

    def _row_wise_channels(self, node: ir.Node, known: _Rows) -> int | None:
        """C of the op's output when it is row-wise on rows of ``known.channels``, else None."""
        op, inputs = node.op_type, list(node.inputs)
        rank = None if known.lead.length is None else known.lead.length + 1
        if op == "MatMul":
            weight = _const(inputs[1])
            if inputs[0] not in self.facts or inputs[1] in self.facts or weight is None or weight.ndim != 2:
                return None
            return int(weight.shape[1]) if weight.shape[0] == known.channels else None
        if op == "LayerNormalization":
            axis = node.attributes.get("axis")
            axis_value = axis.as_int() if axis is not None else -1
            if inputs[0] not in self.facts or not (axis_value == -1 or (rank is not None and axis_value == rank - 1)):
                return None
            if any(v is not None and _const(v) is None for v in inputs[1:]):
                return None
            return known.channels
        if op in UNARY:
            if inputs[0] not in self.facts or any(v is not None and _const(v) is None for v in inputs[1:]):
                return None
            return known.channels
        for value in inputs:  # BINARY
            if value is None or value in self.facts:
                continue
            array = _const(value)
            if array is None or not self._broadcasts_on_rows(array, known.channels, rank):
                return None
        return known.channels

    @staticmethod
    def _broadcasts_on_rows(array: np.ndarray, channels: int, rank: int | None) -> bool:
        """A constant that varies along the last axis only and adds no dims."""
        if array.ndim == 0:
            return True
        if rank is None and array.ndim > 1:
            return False
        if rank is not None and array.ndim > rank:
            return False
        return all(d == 1 for d in array.shape[:-1]) and array.shape[-1] in (1, channels)

    # --- rewrite --------------------------------------------------------------------------------------

    def _name(self, stem: str) -> str:
        self._names += 1
        return f"{stem}_rows{self._names}"

    def _add(self, op: str, inputs: list[ir.Value], stem: str, **attributes) -> ir.Value:
        output = ir.Value(name=self._name(stem))
        node = ir.Node("", op, inputs, attributes=[ir.convenience.convert_attribute(k, v) for k, v in attributes.items()],
                       outputs=[output], name=self._name(stem))
        self.graph.append(node)
        return output

    def _initializer(self, array: np.ndarray, stem: str) -> ir.Value:
        tensor = ir.tensor(array)
        value = ir.Value(name=self._name(stem), const_value=tensor, shape=ir.Shape(array.shape),
                         type=ir.TensorType(tensor.dtype))
        self.graph.register_initializer(value)
        return value

    def rows(self, value: ir.Value) -> ir.Value:
        known = self.facts[value]
        if known.rows is None:
            flat = self._initializer(np.array([-1, known.channels], np.int64), f"{value.name}_flat")
            known.rows = self._add("Reshape", [known.flatten_from, flat], value.name or "tokens")
        return known.rows

    def lead_tensor(self, lead: _Lead) -> ir.Value:
        if lead.tensor is not None:
            return lead.tensor
        key = id(lead)
        if key not in self._lead_tensor:
            shape = self._add("Shape", [lead.source], f"{lead.source.name}_shape")
            start = self._initializer(np.array([0], np.int64), "lead_start")
            end = self._initializer(np.array([-1], np.int64), "lead_end")
            self._lead_tensor[key] = self._add("Slice", [shape, start, end], f"{lead.source.name}_lead")
        return self._lead_tensor[key]

    def shape3(self, known: _Rows) -> ir.Value:
        key = (id(known.lead), known.channels)
        if key not in self._shape3:
            channels = self._initializer(np.array([known.channels], np.int64), "channels")
            self._shape3[key] = self._add("Concat", [self.lead_tensor(known.lead), channels], "token_shape", axis=0)
        return self._shape3[key]

    def _row_inputs(self, node: ir.Node) -> list[ir.Value | None]:
        inputs: list[ir.Value | None] = []
        for value in node.inputs:
            if value is not None and value in self.facts:
                inputs.append(self.rows(value))
                continue
            array = _const(value)
            if node.op_type in BINARY and array is not None and array.ndim > 1:
                value = self._initializer(array.reshape(array.shape[-1]), value.name or "row_constant")
            inputs.append(value)
        return inputs

    def apply(self) -> int:
        """Rewrite the graph; the number of nodes moved onto rows."""
        converted = set(self.converted)
        for node in self.converted:
            output = node.outputs[0]
            attributes = dict(node.attributes)
            if node.op_type == "LayerNormalization":
                attributes["axis"] = ir.AttrInt64("axis", -1)
            row_output = ir.Value(name=self._name(output.name or node.op_type), type=output.type,
                                  shape=ir.Shape([None, self.facts[output].channels]))
            self.graph.append(ir.Node(node.domain, node.op_type, self._row_inputs(node), attributes=attributes.values(),
                                      outputs=[row_output], version=node.version,
                                      name=self._name(node.name or node.op_type)))
            self.facts[output].rows = row_output
        for node in self.flattens:
            node.outputs[0].replace_all_uses_with(self.rows(node.inputs[0]))
        for node in self.reshapes:
            node.replace_input_with(0, self.rows(node.inputs[0]))
        for node, known in self.shape_nodes:
            node.outputs[0].replace_all_uses_with(self.shape3(known))
        for node, lead in self.slice_nodes:
            if node.outputs[0] is not lead.tensor:
                node.outputs[0].replace_all_uses_with(self.lead_tensor(lead))
        for node in self.converted:
            output = node.outputs[0]
            outside = [(user, index) for user, index in output.uses() if user not in converted]
            if outside:
                known = self.facts[output]
                rebuilt = self._add("Reshape", [known.rows, self.shape3(known)], output.name or "tokens")
                for user, index in outside:
                    user.replace_input_with(index, rebuilt)
        for node in self.converted:  # detach, so the producers of their inputs lose these uses
            for index in range(len(node.inputs)):
                node.replace_input_with(index, None)
        self.graph.remove(self.converted, safe=False)
        return len(converted)


def token_rows(model: ir.Model) -> tuple[ir.Model, int]:
    """The model with the rewrite of the module docstring applied (a copy; ``model`` itself when nothing
    changes) and the number of ops moved onto 2-D rows."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < MIN_OPSET:
        return model, 0
    working = model.clone()
    rewrite = _TokenRows(working.graph)
    rewrite.analyse()
    if not rewrite.converted:
        return model, 0
    moved = rewrite.apply()
    ir_common.RemoveUnusedNodesPass()(working)
    try:
        working.graph.sort()
    except ValueError:  # a cycle: some proven lead was computed after its use
        return model, 0
    return working, moved
