"""Old models (opset 1–12, IR version 3) brought to the opset a pass needs, or run where they are.

**When.** A model is upgraded only when a pass needs a newer opset than it imports
(:attr:`~graphopt.pass_base.GraphoptPass.min_opset`), or when onnxruntime has no kernel for one of its
ops at its own opset (``BatchNormalization`` 6, for one): :func:`prepare_for_pass`, :func:`runnable`.

**How.** onnx's version converter does the work; first the things it trips on are repaired
(:func:`repair_legacy`), each with a note:

* IR version 3 requires every initializer to be a graph input too, and the converter treats one that is
  not as undefined (``Input 1 is undefined!``): the IR version is raised to at least 4, where both forms
  are valid (:func:`settle_ir_version`, also applied to every pass result so that whatever IR version a
  model has, it satisfies that version's rules);
* legacy attributes: ``consumed_inputs`` (opset 1) is dropped; ``is_test`` (``BatchNormalization`` < 7,
  ``Dropout`` < 7) is dropped — graphopt only runs inference, and a ``BatchNormalization`` whose training
  outputs are used is refused; ``BatchNormalization``'s ``spatial`` (< 9) is dropped when 1, and when 0
  (statistics per activation, shaped ``C×D1×…``) the node is rewritten as a per-channel one on the
  sample flattened to ``C·D1·…`` channels (:func:`_per_activation_bn`);
* unused trailing outputs of ``BatchNormalization`` / ``Dropout`` and empty trailing optional inputs are
  removed.

A model with no ``ai.onnx`` op at all (``ai.onnx.ml`` only) only gets the newer import.

**When it still fails.** The blocking node is found by converting the model node by node
(:func:`blocking_node`). A pass that can run at the model's own opset (``lowest_opset``: int8 from
opset 10 with per-tensor weights, fp16 from 6) then runs there, with a note; otherwise the run is refused
with one line that names the node and its op.
"""

from __future__ import annotations

import dataclasses
import re

import onnx
import onnx_ir as ir
from onnx import helper

from graphopt import large
from graphopt.errors import InputError, first_line
from graphopt.model_io import DEFAULT_OPSET

MIN_IR_WITHOUT_INPUT_RULE = 4
"""From IR version 4 on, initializers need not be graph inputs."""


class UpgradeError(InputError):
    """The model cannot be brought to the opset a pass needs (the message names the blocking node)."""


@dataclasses.dataclass
class Upgrade:
    """The model to run a pass on and what was done to it (report notes)."""

    model: ir.Model
    notes: list[str] = dataclasses.field(default_factory=list)
    upgraded: bool = False


def opset_version(model: ir.Model | onnx.ModelProto) -> int:
    """The default-domain opset the model imports."""
    if isinstance(model, onnx.ModelProto):
        versions = {entry.domain or "": entry.version for entry in model.opset_import}
        return int(versions.get("", versions.get("ai.onnx", 1)))
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))


# ------------------------------------------------------------------------------------------- IR version


def required_ir_version(model: ir.Model | onnx.ModelProto) -> int:
    """The lowest IR version whose rules the model satisfies: what its opsets need, and 4 when an
    initializer is not also a graph input (IR 3's rule)."""
    if isinstance(model, onnx.ModelProto):
        opsets = list(model.opset_import)
        inputs = {v.name for v in model.graph.input}
        loose = any(t.name not in inputs for t in model.graph.initializer)
    else:
        opsets = [helper.make_opsetid(d, v) for d, v in model.opset_imports.items()]
        inputs = {v.name for v in model.graph.inputs}
        loose = any(name not in inputs for name in model.graph.initializers)
    needed = helper.find_min_ir_version_for(opsets, ignore_unknown=True)
    return max(needed, MIN_IR_WITHOUT_INPUT_RULE if loose else 0)


def settle_ir_version(model: ir.Model | onnx.ModelProto) -> str | None:
    """Raise the model's IR version to :func:`required_ir_version` if it is lower (in place); the note."""
    needed = required_ir_version(model)
    if model.ir_version >= needed:
        return None
    old = model.ir_version
    model.ir_version = needed
    return f"IR version raised {old} → {needed}"


# ------------------------------------------------------------------------------------------- repairs


def repair_legacy(proto: onnx.ModelProto) -> list[str]:
    """Repair, in place, what onnx's version converter trips on (module docstring) in the main graph; the notes.

    Raises :class:`UpgradeError` for what cannot be repaired (a training-mode BatchNormalization).
    """
    notes: list[str] = []
    if proto.ir_version < MIN_IR_WITHOUT_INPUT_RULE:
        notes.append(f"IR version raised {proto.ir_version} → {MIN_IR_WITHOUT_INPUT_RULE}")
        proto.ir_version = MIN_IR_WITHOUT_INPUT_RULE
    opset = opset_version(proto)
    used = _used_names(proto.graph)
    counts: dict[str, int] = {}
    nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain not in ("", "ai.onnx"):
            nodes.append(node)
            continue
        for name in _drop_attributes(node, opset):
            counts[f"legacy attribute '{name}' dropped"] = counts.get(f"legacy attribute '{name}' dropped", 0) + 1
        if node.op_type in ("BatchNormalization", "Dropout"):
            _trim_outputs(node, used)
        while node.input and not node.input[-1]:
            node.input.pop()
        if node.op_type == "BatchNormalization" and opset < 9 and _attr(node, "spatial", 1) == 0:
            if _rank_of(proto, node.input[1]) == 1:  # per-channel statistics: spatial=0 means nothing else
                _remove_attr(node, "spatial")
            else:
                nodes += _per_activation_bn(node, opset)
                counts["BatchNormalization spatial=0 rewritten as arithmetic"] = counts.get(
                    "BatchNormalization spatial=0 rewritten as arithmetic", 0) + 1
                continue
        elif node.op_type == "BatchNormalization":
            _remove_attr(node, "spatial")
        nodes.append(node)
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    notes += [f"{what} ({n} node{'s' if n > 1 else ''})" for what, n in counts.items()]
    return notes


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _remove_attr(node: onnx.NodeProto, name: str) -> bool:
    kept = [a for a in node.attribute if a.name != name]
    if len(kept) == len(node.attribute):
        return False
    del node.attribute[:]
    node.attribute.extend(kept)
    return True


def _drop_attributes(node: onnx.NodeProto, opset: int) -> list[str]:
    dropped = []
    if _remove_attr(node, "consumed_inputs"):
        dropped.append("consumed_inputs")
    if node.op_type in ("BatchNormalization", "Dropout") and opset < 7:
        if node.op_type == "BatchNormalization" and _attr(node, "is_test", 1) == 0 and len(
                [o for o in node.output if o]) > 1:
            raise UpgradeError(f"node '{node.name or node.output[0]}' (BatchNormalization) is in training mode "
                               "(is_test=0, running statistics as outputs); export the model in eval mode")
        if _remove_attr(node, "is_test"):
            dropped.append("is_test")
    return dropped


def _used_names(graph: onnx.GraphProto) -> set[str]:
    used = {o.name for o in graph.output}
    for node in graph.node:
        used.update(node.input)
        for a in node.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                used |= _used_names(a.g)
            elif a.type == onnx.AttributeProto.GRAPHS:
                for g in a.graphs:
                    used |= _used_names(g)
    return used


def _trim_outputs(node: onnx.NodeProto, used: set[str]) -> None:
    """Drop the node's trailing outputs nobody reads (training statistics, Dropout's mask)."""
    while len(node.output) > 1 and (not node.output[-1] or node.output[-1] not in used):
        node.output.pop()
    if node.op_type == "BatchNormalization" and len(node.output) > 1:
        raise UpgradeError(f"node '{node.name or node.output[0]}' (BatchNormalization) returns its running "
                           "statistics (training mode); export the model in eval mode")


def _rank_of(proto: onnx.ModelProto, name: str) -> int | None:
    for tensor in proto.graph.initializer:
        if tensor.name == name:
            return len(tensor.dims)
    for info in [*proto.graph.input, *proto.graph.value_info]:
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _per_activation_bn(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto]:
    """``BatchNormalization(spatial=0)`` (statistics per activation, shaped like one sample ``C×D1×…``) as a
    per-channel one on the sample flattened to ``(N, C·D1·…, 1)``, reshaped back: the same arithmetic,
    with ops every later opset keeps (no broadcasting, which the converter cannot move across opset 7
    without static shapes)."""
    if opset < 5:
        raise UpgradeError(f"node '{node.name or node.output[0]}' (BatchNormalization) has spatial=0 at opset "
                           f"{opset} < 5 (no Reshape with a shape input to rewrite it); export at opset ≥ 5")
    x, *stats = node.input[:5]
    base = node.name or node.output[0]
    t = lambda suffix: f"{base}__bn_{suffix}"  # noqa: E731
    int64 = onnx.TensorProto.INT64
    nodes = [
        helper.make_node("Constant", [], [t("flat")], name=t("flat"),
                         value=helper.make_tensor(t("flat_value"), int64, [3], [0, -1, 1])),
        helper.make_node("Constant", [], [t("vector")], name=t("vector"),
                         value=helper.make_tensor(t("vector_value"), int64, [1], [-1])),
        helper.make_node("Shape", [x], [t("shape")], name=t("shape")),
        helper.make_node("Reshape", [x, t("flat")], [t("x_flat")], name=t("x_flat")),
    ]
    flat_stats = []
    for i, name in enumerate(stats):
        nodes.append(helper.make_node("Reshape", [name, t("vector")], [t(f"stat{i}")], name=t(f"stat{i}")))
        flat_stats.append(t(f"stat{i}"))
    attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name in ("epsilon", "momentum")}
    nodes.append(helper.make_node("BatchNormalization", [t("x_flat"), *flat_stats], [t("y_flat")], name=base,
                                  **attributes))
    nodes.append(helper.make_node("Reshape", [t("y_flat"), t("shape")], [node.output[0]], name=t("unflat")))
    return nodes


# ------------------------------------------------------------------------------------------- conversion


def _converter_message(exc: BaseException) -> str:
    """The converter's reason without its C++ source location and assertion text."""
    text = first_line(exc)
    text = re.sub(r"^\S+\.(h|cc|cpp):\d+: (\w+: )?", "", text)
    text = re.sub(r"^.*?Assertion `.*?` failed: ", "", text).strip()
    symbolic = re.match(r"(\S+) Dimension is a param instead of an int", text)
    if symbolic:  # the opset-6 broadcast adapters need every dim as a number
        return (f"the converter needs static shapes here, but dim '{symbolic.group(1)}' is symbolic; "
                "export the model with static shapes or at a newer opset")
    return text


def blocking_node(proto: onnx.ModelProto, target: int) -> tuple[onnx.NodeProto, str] | None:
    """The first node (in graph order) that onnx's version converter cannot take to ``target`` on its own,
    with the converter's reason; ``None`` when every node converts alone. Main-graph nodes, after
    :func:`repair_legacy`; each is converted as a one-node model typed by shape inference."""
    repaired = onnx.ModelProto()
    repaired.CopyFrom(proto)
    repair_legacy(repaired)
    try:
        inferred = onnx.shape_inference.infer_shapes(repaired)
    except Exception:
        inferred = repaired
    types = {v.name: v.type for v in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]}
    initializers = {t.name: t for t in repaired.graph.initializer}
    for node in repaired.graph.node:
        names = list(dict.fromkeys(n for n in node.input if n))
        inputs = [_value_info(n, types) for n in names]
        outputs = [_value_info(n, types) for n in node.output if n]
        single = helper.make_model(
            helper.make_graph([node], "node", inputs, outputs, [initializers[n] for n in names if n in initializers]),
            opset_imports=list(repaired.opset_import))
        single.ir_version = max(repaired.ir_version, MIN_IR_WITHOUT_INPUT_RULE)
        try:
            onnx.version_converter.convert_version(single, target)
        except Exception as exc:
            return node, _converter_message(exc)
    return None


def _value_info(name: str, types: dict) -> onnx.ValueInfoProto:
    info = onnx.ValueInfoProto(name=name)
    if name in types and types[name].WhichOneof("value") is not None:
        info.type.CopyFrom(types[name])
    else:
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return info


def upgrade(model: ir.Model, target: int = DEFAULT_OPSET, need: int | None = None) -> Upgrade:
    """``model`` converted to opset ``target`` (or, if that fails, to ``need``, the least a pass needs).

    Raises :class:`UpgradeError` naming the blocking node when neither works.
    """
    old = opset_version(model)
    if not any(node.domain in ("", "ai.onnx") for node in ir.traversal.RecursiveGraphIterator(model.graph)):
        result = model.clone()  # no ai.onnx op to convert (an ai.onnx.ml model): only the import changes
        result.opset_imports[""] = target
        settle_ir_version(result)
        return Upgrade(result, [f"opset import {old} → {target} (the model has no ai.onnx op to convert)"], True)
    proto = large.to_proto(model)
    notes: list[str] = []
    repaired = onnx.ModelProto()
    repaired.CopyFrom(proto)
    notes += repair_legacy(repaired)
    errors: list[str] = []
    for version in dict.fromkeys(v for v in (target, need) if v is not None and v > old):
        try:
            converted = onnx.version_converter.convert_version(repaired, version)
        except Exception as exc:
            errors.append(_converter_message(exc))
            continue
        settle_ir_version(converted)
        result = large.from_proto(converted)
        return Upgrade(result, [f"opset upgraded {old} → {version}"] + [f"upgrade: {n}" for n in notes], True)
    if not errors:
        return Upgrade(model, [], False)
    raise UpgradeError(_blocked_message(proto, old, target, errors[0]))


def _blocked_message(proto: onnx.ModelProto, old: int, target: int, error: str) -> str:
    found = None
    try:
        found = blocking_node(proto, target)
    except UpgradeError as exc:
        return f"cannot upgrade the model from opset {old} to {target}: {exc}"
    if found is None:
        return f"cannot upgrade the model from opset {old} to {target}: {error}"
    node, reason = found
    return (f"cannot upgrade the model from opset {old} to {target}: node '{node.name or node.output[0]}' "
            f"({node.op_type}): {reason}")


def prepare_for_pass(model: ir.Model, pass_) -> Upgrade:
    """The model a pass runs on: as it is when its opset suffices, else upgraded (module docstring); when
    the upgrade fails, as it is if the pass runs at its opset (``lowest_opset``), else :class:`UpgradeError`."""
    need = getattr(pass_, "min_opset", None)
    old = opset_version(model)
    if not need or old >= need:
        return Upgrade(model)
    try:
        return upgrade(model, DEFAULT_OPSET, need)
    except UpgradeError as exc:
        lowest = getattr(pass_, "lowest_opset", None)
        if lowest is not None and old >= lowest:
            why = str(exc).split(": ", 1)[-1]
            return Upgrade(model, [f"opset {old} kept ({why}); {pass_.name} runs at opset {old}"
                                   + (f": {pass_.own_opset_note}" if getattr(pass_, "own_opset_note", "") else "")])
        if lowest is not None and old < lowest:
            raise UpgradeError(f"{exc}; {pass_.name} needs at least opset {lowest} to run without it") from exc
        raise


def runnable(model: ir.Model) -> Upgrade | None:
    """The model upgraded to :data:`DEFAULT_OPSET` when onnxruntime cannot load it at its own opset but can
    after the upgrade (an op whose old version has no kernel); ``None`` when that does not help."""
    from graphopt.engines import ort as ort_engine

    if opset_version(model) >= DEFAULT_OPSET:
        return None
    try:
        result = upgrade(model, DEFAULT_OPSET)
    except UpgradeError:
        return None
    try:
        ort_engine.build(result.model)
    except Exception:
        return None
    result.notes[0] += " (onnxruntime has no kernel for an op at the model's opset)"
    return result
