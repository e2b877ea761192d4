"""Numeric self-check of a low-precision model on a machine that may lack its kernels.

**Emulation.** onnxruntime's CPU provider runs few ops natively in fp16 (and almost none in
bf16). For ops it lacks it silently inserts Casts to fp32 *and drops the rounding between two such
ops*, so an fp16 overflow between them never shows (``Exp`` → ``Div`` gives 4.85e4 where a GPU gives
inf). :func:`emulation_copy` therefore writes the rounding into the graph: every node that reads or
writes the low type and has no native CPU kernel gets explicit ``Cast(low → fp32)`` on its low
inputs and ``Cast(fp32 → low)`` on its outputs. Each tensor is then rounded to the low type exactly
where the target's kernels would round it (computation inside a node in fp32, as GPU kernels
accumulate), so overflow to ±inf and the rounding error of the target are both reproduced.

**Check.** :func:`self_check` runs the fp32 model and the emulation copy on the same data; it fails
when an output is NaN/Inf or its mean cosine to the fp32 output drops by more than the tolerance
(``drop = 100·(1 − cos)`` points, as in :mod:`graphopt.verify`). On a non-finite output
:func:`first_non_finite` exposes every intermediate (``with_outputs``) on the first failing sample
and returns the first tensor, in topological order, that is non-finite while its fp32 value is finite.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graphopt.calibration import float_tensor_names, with_outputs
from graphopt.data import DataSet
from graphopt.engines import ort as ort_engine
from graphopt.passes.fp16.blocklist import has_native_cpu_kernel
from graphopt.passes.fp16.typecheck import elem_types, has_subgraph, iter_graphs
from graphopt.verify import mean_cosine

EMU_SUFFIX = "__fp32emu"


def emulation_copy(proto: onnx.ModelProto, low: int) -> tuple[onnx.ModelProto, int]:
    """A copy of ``proto`` that onnxruntime CPU runs with the target's rounding (module docstring).

    Returns the copy and the number of nodes emulated in fp32.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    types = elem_types(copy)
    opsets = {entry.domain or "": entry.version for entry in copy.opset_import}
    emulated = 0
    for graph in iter_graphs(copy.graph):
        nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            in_types = tuple(types.get(n, 0) if n else 0 for n in node.input)
            out_types = tuple(types.get(n, 0) if n else 0 for n in node.output)
            if (node.op_type in ("Cast", "Constant") or has_subgraph(node) or 0 in out_types
                    or any(a.name == "dtype" for a in node.attribute)
                    or (low not in in_types and low not in out_types)):
                nodes.append(node)
                continue
            domain = "" if node.domain == "ai.onnx" else node.domain
            version = opsets.get(domain, opsets.get("ai.onnx", 1))
            attrs = tuple(a.SerializeToString() for a in node.attribute)
            if has_native_cpu_kernel(domain, node.op_type, version, in_types, out_types, attrs):
                nodes.append(node)
                continue
            emulated += 1
            for i, name in enumerate(node.input):
                if name and in_types[i] == low:
                    wide = f"{name}{EMU_SUFFIX}_{node.name}_{i}"
                    nodes.append(helper.make_node("Cast", [name], [wide], to=TensorProto.FLOAT, name=f"{wide}_cast"))
                    node.input[i] = wide
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == low:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float32), attr.t.name))
            nodes.append(node)
            for i, name in enumerate(node.output):
                if name and out_types[i] == low:
                    wide = f"{name}{EMU_SUFFIX}"
                    node.output[i] = wide
                    nodes.append(helper.make_node("Cast", [wide], [name], to=low, name=f"{wide}_cast"))
        del graph.node[:]
        graph.node.extend(nodes)
        kept = [vi for vi in graph.value_info]  # declared types of renamed outputs no longer apply
        del graph.value_info[:]
        graph.value_info.extend(vi for vi in kept if EMU_SUFFIX not in vi.name)
    return copy, emulated


@dataclasses.dataclass
class CheckResult:
    ok: bool
    finite: bool
    message: str = ""
    worst_output: str | None = None
    worst_drop: float = 0.0
    max_abs_error: float = 0.0
    failing_sample: int | None = None


def run_outputs(proto: onnx.ModelProto, data: DataSet, batch: int) -> dict[str, np.ndarray]:
    engine = ort_engine.build(proto, optimization="basic")
    return engine.run_batches(data.batches(batch), data.join)


def self_check(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
               tolerance_points: float) -> CheckResult:
    """Compare the low-precision outputs with the fp32 ones (see the module docstring)."""
    worst_name, worst_drop, worst_err = None, 0.0, 0.0
    for name, ref in reference.items():
        cand = np.asarray(candidate[name])
        ref = np.asarray(ref)
        if ref.dtype.kind != "f":
            continue
        bad = ~np.isfinite(cand.astype(np.float32))
        if bad.any() and np.isfinite(ref).all():
            sample = int(np.argwhere(bad.reshape(len(bad), -1).any(axis=1))[0][0]) if cand.ndim else 0
            return CheckResult(False, False, f"output '{name}' has {int(bad.sum())} NaN/Inf value(s)", name,
                               100.0, float("inf"), sample)
        if ref.ndim == 0:
            ref, cand = ref.reshape(1, 1), cand.reshape(1, 1)
        drop = 100.0 * (1.0 - mean_cosine(ref, cand.astype(np.float32)))
        err = float(np.max(np.abs(ref.astype(np.float64) - cand.astype(np.float64)), initial=0.0))
        if drop >= worst_drop:
            worst_name, worst_drop, worst_err = name, drop, err
    ok = worst_drop <= tolerance_points
    message = "" if ok else (f"output '{worst_name}' moved too far in low precision: cosine drop {worst_drop:.3g} "
                             f"points > {tolerance_points} (max |Δ| {worst_err:.3g})")
    return CheckResult(ok, True, message, worst_name, worst_drop, worst_err)


def first_non_finite(reference_model: onnx.ModelProto, candidate: onnx.ModelProto,
                     feeds: dict[str, np.ndarray]) -> tuple[str, onnx.NodeProto | None] | None:
    """The first tensor (topological order) non-finite in ``candidate`` but finite in the fp32 model,
    with the node that produced it; ``None`` when no intermediate is non-finite."""
    names = [n for n in float_tensor_names(candidate, include_inputs=False)]
    values = ort_engine.build(with_outputs(candidate, names), optimization="disable")
    got = dict(zip(values.output_names, values.session.run(None, feeds)))
    reference_names = set(float_tensor_names(reference_model, include_inputs=False))
    wanted = [n.split(EMU_SUFFIX)[0] for n in names]
    wanted = [n for n in dict.fromkeys(wanted) if n in reference_names]
    ref_engine = ort_engine.build(with_outputs(reference_model, wanted), optimization="disable")
    ref = dict(zip(ref_engine.output_names, ref_engine.session.run(None, feeds)))
    producers = {out: node for g in iter_graphs(candidate.graph) for node in g.node for out in node.output}
    for name in names:
        value = got.get(name)
        if value is None or np.asarray(value).dtype.kind != "f":
            continue
        if np.isfinite(np.asarray(value, dtype=np.float32)).all():
            continue
        base = name.split(EMU_SUFFIX)[0]
        if base in ref and not np.isfinite(ref[base]).all():
            continue  # already non-finite in fp32: not the conversion's fault
        if EMU_SUFFIX in name:
            continue  # computed in fp32 by the emulation; its rounded twin is the real tensor
        producer = producers.get(name)
        if producer is not None and producer.op_type == "Cast" and producer.input[0].endswith(EMU_SUFFIX):
            producer = producers.get(producer.input[0], producer)  # the emulated node, not its rounding Cast
        return base, producer
    return None
