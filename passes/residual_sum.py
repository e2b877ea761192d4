"""Residual sums read by a LayerNorm written as ``Sum`` so onnxruntime's CPU session keeps them unfused.

onnxruntime fuses ``Add(x, residual) → LayerNormalization`` (and the LayerNorm it first fuses from
ReduceMean / Sub / Pow / … ops) into its contrib ``SkipLayerNormalization`` whenever both Add inputs
have the same known 3-D shape — which they do once a model has been through shape inference (onnxsim
writes it). On the CPU provider that kernel is the slow one: measured with onnxruntime 1.31 on a
2-core AVX-512 VNNI machine, fp32, medians of 300 interleaved runs (``tools/bench_residual_sum.py``):

==========  =====  ==============================  ===============  =======
input       thr    Add (fused: SkipLayerNorm)      Sum + LayerNorm  ratio
==========  =====  ==============================  ===============  =======
1×16×384    1      36 µs                           11 µs            3.4×
4×64×384    1      489 µs                          73 µs            6.7×
1×128×768   1      528 µs                          102 µs           5.2×
8×128×768   1      3941 µs                         847 µs           4.7×
4×64×384    2      270 µs                          75 µs            3.6×
8×128×768   2      7475 µs                         873 µs           8.6×
==========  =====  ==============================  ===============  =======

so MiniLM-L6 (6 such sums) ran 3.5 % *slower* after ``simplify`` than before it. ``Sum`` of two tensors
is the same elementwise addition, bit for bit, with the same broadcasting (opset ≥ 8), and no
onnxruntime fusion pattern starts from it. The rule: an ``Add`` of two computed tensors (no
constant: a bias Add stays), not a graph output, no input of a known rank other than 3 (onnxruntime does not
fuse those; :mod:`graphopt.passes.token_rows` leaves 2-D ones), whose every reader is a
``LayerNormalization`` reading it as its data input, or the ``ReduceMean`` + ``Sub`` pair that opens a
decomposed LayerNorm.
For the ``cpu`` target only: the CUDA kernel is fast and TensorRT matches its own patterns.
"""

from __future__ import annotations

import onnx_ir as ir

MIN_OPSET = 8
"""``Sum`` broadcasts like ``Add`` from opset 8 on."""


def _is_constant(value: ir.Value | None) -> bool:
    if value is None:
        return True
    if value.const_value is not None or value.is_initializer():
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def _opens_layer_norm(value: ir.Value) -> bool:
    """Every reader of ``value`` is a LayerNorm's data input, or the ReduceMean + Sub of a decomposed one."""
    readers = [(node.op_type, node.domain, index) for node, index in value.uses()]
    if not readers or any(domain not in ("", "ai.onnx") for _, domain, _ in readers):
        return False
    kinds = {op for op, _, _ in readers}
    if kinds == {"LayerNormalization"}:
        return all(index == 0 for _, _, index in readers)
    if kinds == {"ReduceMean", "Sub"}:
        means = [node for node, _ in value.uses() if node.op_type == "ReduceMean"]
        subs = [(node, index) for node, index in value.uses() if node.op_type == "Sub"]
        mean_outputs = {node.outputs[0] for node in means}
        return all(index == 0 and node.inputs[1] in mean_outputs for node, index in subs)
    return False


def residual_sums(model: ir.Model) -> list[str]:
    """Rewrite the Adds the module docstring describes as ``Sum`` in place; their names."""
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0))
    if opset < MIN_OPSET:
        return []
    changed = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        if node.op_type != "Add" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
            continue
        if any(_is_constant(value) for value in node.inputs):
            continue
        if any(value.shape is not None and len(value.shape) != 3 for value in node.inputs):
            continue
        output = node.outputs[0]
        if output.is_graph_output() or not _opens_layer_norm(output):
            continue
        node.op_type = "Sum"
        node.version = None
        changed.append(node.name or output.name or "")
    return changed
