"""``fp16``: convert float32 weights and compute to fp16 (or bf16), then prove the result.

Steps:

1. **Prepare** a copy: opset < 6 (bf16: < 13) upgraded (:mod:`graphopt.opset_upgrade`), initializers removed from the graph inputs (old
   exporters), ``Constant`` weights lifted to initializers, every node given a unique name.
2. **Decide what stays fp32** (:mod:`graphopt.passes.fp16.blocklist`): required ops (int8 Q/DQ
   among them, so ``--int8 --fp16`` keeps int8 where quantized), user ``block_ops``/``block_nodes``,
   nodes whose schema does not allow the low type at this opset, and for fp16 the overflow
   candidates — from data (calibration, else evaluation data) or, without data, the default list.
3. **Convert** with onnxruntime's float16 converter (a maintained fork of onnxconverter-common's)
   on a copy of the proto. bf16 reuses the same layout: every fp16 type the converter wrote is
   retyped to bf16 and every converted weight is re-encoded from its original fp32 value.
4. **Repair and check types** (:mod:`graphopt.passes.fp16.typecheck`): mixed float inputs fixed,
   redundant Casts removed and Casts of constants folded, topological order and unique names
   restored, then a strict type check.
5. **Target**: on ``cpu`` nodes without a native CPU kernel for the low type go back to fp32 and
   steps 3–4 repeat; on ``cuda``/``trt`` they stay low precision and are emulated for the check.
6. **Self-check** (:mod:`graphopt.passes.fp16.verify`) on the evaluation data (else probe inputs):
   NaN/Inf or a cosine drop above ``tolerance_points`` triggers up to ``max_repairs`` repairs
   (first: ranges measured on the check data; then the nodes around the first non-finite tensor go
   to fp32). If it still fails, ``on_failure="error"`` raises :class:`QualityGateError` naming the
   first non-finite tensor (nothing is written), ``"rollback"`` returns the input model unchanged
   with a note so the rest of the pipeline still runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import time
from collections.abc import Iterator
from typing import Literal

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, numpy_helper
from onnx_ir.passes import common as ir_common

from graphopt import large
from graphopt.console import WarningLog, captured_warnings
from graphopt.data import DataSet, input_specs, probe_data
from graphopt.errors import InputError, PassFailedError, PreconditionFailed, QualityGateError
from graphopt.model_io import normalize_model
from graphopt.opset_upgrade import prepare_for_pass
from graphopt.pass_base import GraphoptPass, GraphoptPassResult
from graphopt.passes.fp16 import blocklist, typecheck, verify

CPU_SLOWDOWN_NOTE = ("fp16 usually runs slower on CPUs without native fp16 (measured 1.1–1.5× slower here); "
                     "it is meant for GPU targets (--target cuda / trt)")


@dataclasses.dataclass(frozen=True)
class Fp16Options:
    precision: Literal["fp16", "bf16"] = "fp16"
    keep_io_types: bool = True
    """Graph inputs and outputs stay float32 (a Cast at each); False converts them too (``--fp16-io``)."""
    block_ops: tuple[str, ...] = ()
    """Op types kept in fp32 in addition to the required and data-driven ones."""
    block_nodes: tuple[str, ...] = ()
    """Node names kept in fp32."""
    safety_margin: float = 4.0
    """A node stays fp32 when a tensor it touches reaches max |x| > 65504 / safety_margin on the data."""
    default_block_list: bool = True
    """Without data, keep the overflow-prone ops of ``DEFAULT_OVERFLOW_OPS`` in fp32 (fp16 only)."""
    tolerance_points: float = 1.0
    """Largest allowed cosine drop per output in the self-check, ``100·(1 − cos)`` points."""
    max_repairs: int = 3
    """Self-check repair rounds before the pass fails."""
    max_check_samples: int = 64
    """Samples of the evaluation / calibration data used for ranges and the self-check."""
    on_failure: Literal["error", "rollback"] = "error"
    """``error``: raise QualityGateError (exit 1, nothing written); ``rollback``: keep the input model."""


@dataclasses.dataclass
class _Attempt:
    proto: onnx.ModelProto
    casts_added: int
    fixes: dict[str, int]


class Fp16Pass(GraphoptPass):
    """Float32 → fp16 / bf16 with fp32 islands where needed, type-checked and numerically self-checked."""

    name = "fp16"
    Options = Fp16Options
    uses_data = frozenset({"calib", "eval"})
    min_opset = 6
    """fp16 is in the op schemas from opset 6 (the type check keeps a node without it in fp32); bf16 from 13."""
    lowest_opset = 6

    def __init__(self, options: Fp16Options | None = None) -> None:
        super().__init__(options)
        if self.options.precision == "bf16":
            self.min_opset = self.lowest_opset = 13

    @property
    def low(self) -> int:
        return TensorProto.BFLOAT16 if self.options.precision == "bf16" else TensorProto.FLOAT16

    @property
    def label(self) -> str:
        return self.options.precision

    def requires(self, model: ir.Model) -> None:
        if self.options.precision == "bf16" and not self.options.keep_io_types:
            raise PreconditionFailed("bf16 graph inputs/outputs cannot be fed from numpy here; "
                                     "keep the I/O types (drop --fp16-io) with --bf16")
        proto = large.to_proto(model)
        nodes = [n for g in typecheck.iter_graphs(proto.graph) for n in g.node if n.op_type != "Constant"]
        sequence = next((n for n in nodes if n.op_type in blocklist.SEQUENCE_OPS), None)
        if sequence is not None and any(n.op_type not in blocklist.SEQUENCE_OPS for n in nodes):
            raise PreconditionFailed(f"{self.label} cannot convert models that mix sequence values with float "
                                     f"compute: node '{sequence.name or sequence.output[0]}' ({sequence.op_type}); "
                                     f"drop --{self.label}")
        types = typecheck.elem_types(proto)
        if not any(t in typecheck.FLOAT_TYPES for t in types.values()):
            raise PreconditionFailed(f"model has no float tensors (weights or activations) to convert to "
                                     f"{self.label}; drop --{self.label}")

    def call(self, model: ir.Model) -> GraphoptPassResult:
        started = time.perf_counter()
        notes: list[str] = []
        proto = self._prepare(model, notes)
        types = typecheck.elem_types(proto)
        present = {t for t in types.values() if t in typecheck.LOW_TYPES}
        if present:
            kinds = "/".join(sorted(typecheck.type_name(t) for t in present))
            return self.result(model.clone(), False, {"already_low_precision": kinds},
                               [f"model already computes in {kinds}; nothing converted"])
        if TensorProto.FLOAT not in types.values():
            return self.result(model.clone(), False, {}, ["model has no float32 tensors; nothing converted"])
        reasons = self._decide_fp32_nodes(proto, types, notes)
        if all(n.name in reasons for g in typecheck.iter_graphs(proto.graph) for n in g.node if n.op_type != "Constant"):
            why = collections.Counter(r.split(" (")[0] for r in reasons.values()).most_common(1)
            return self.result(model.clone(), False, {"nodes_kept_fp32": len(reasons)}, notes + [
                f"no node could run in {self.label} (mostly: {why[0][0] if why else 'blocked'}); the model stays fp32"])
        target = self.context.target.kind
        if target == "cpu":
            notes.append(CPU_SLOWDOWN_NOTE)
        data = self._check_data(model)
        batch = data.batch_size_for(input_specs(model))
        reference = verify.run_outputs(proto, data, batch)
        ranges_from_check = False
        attempt = None
        check = None
        for round_ in range(self.options.max_repairs + 1):
            attempt = self._convert_for_target(proto, reasons, notes)
            check, candidate_proto = self._numeric_check(attempt.proto, data, batch, reference)
            if check is None or check.ok:
                break
            if round_ == self.options.max_repairs:
                break
            if not ranges_from_check and self.low == TensorProto.FLOAT16:
                ranges_from_check = True
                added = self._block_from_ranges(proto, data, reasons, "self-check data")
                if added:
                    continue
            if check.finite:
                break  # a tolerance miss is not localised to one tensor: fail below
            culprit = verify.first_non_finite(proto, candidate_proto,
                                              self._feeds(data, batch, check.failing_sample))
            added = self._block_around(proto, attempt.proto, culprit, reasons)
            if not added:
                break
        assert attempt is not None
        if not any(t == self.low for t in typecheck.elem_types(attempt.proto).values()):
            why = collections.Counter(r.split(" (")[0] for r in reasons.values()).most_common(1)
            return self.result(model.clone(), False, {"nodes_kept_fp32": len(reasons)}, notes + [
                f"no node could run in {self.label} (mostly: {why[0][0] if why else 'blocked'}); the model stays fp32"])
        if check is not None and not check.ok:
            return self._fail(model, proto, attempt, check, data, batch)
        stats = self._stats(model, attempt, reasons, check, time.perf_counter() - started)
        if check is None:
            notes.append(f"numerics not checked: onnxruntime (CPU) cannot run the {self.label} model here")
        return self.result(large.from_proto(attempt.proto), True, stats, notes)

    # -- preparation -------------------------------------------------------------------------

    def _prepare(self, model: ir.Model, notes: list[str]) -> onnx.ModelProto:
        prepared = prepare_for_pass(model, self)  # a no-op after the manager's own (called directly: not)
        notes += prepared.notes
        working = prepared.model.clone()
        normalize_model(working)  # initializers out of the inputs, Constant weights lifted
        ir_common.NameFixPass()(working)
        return large.to_proto(working)

    def _decide_fp32_nodes(self, proto: onnx.ModelProto, types: dict[str, int], notes: list[str]) -> dict[str, str]:
        """``{node name: why it stays fp32}`` before any conversion."""
        opts = self.options
        reasons: dict[str, str] = {}
        names = {n.name for g in typecheck.iter_graphs(proto.graph) for n in g.node}
        unknown = sorted(set(opts.block_nodes) - names)
        if unknown:
            raise InputError(f"--fp16-block-nodes names unknown node(s) {', '.join(unknown[:5])}; "
                             f"see `graphopt inspect` for node names")
        for name in blocklist.op_nodes(proto, blocklist.REQUIRED_FP32_OPS | blocklist.SEQUENCE_OPS):
            reasons[name] = "required"
        for name in blocklist.rounding_cone(proto):
            reasons.setdefault(name, "feeds a rounding op")
        for name in blocklist.max_subtractions(proto):
            reasons.setdefault(name, "subtracts a max (cancellation)")
        for name in blocklist.op_nodes(proto, set(opts.block_ops)):
            reasons[name] = "user op"
        for name in opts.block_nodes:
            reasons[name] = "user node"
        opset = typecheck.opset_of(proto)
        for graph in typecheck.iter_graphs(proto.graph):
            for node in graph.node:
                if node.name not in reasons and not typecheck.schema_allows(node, opset, self.low, types):
                    reasons[node.name] = f"no {self.label} in the op schema at opset {opset}"
        if self.low == TensorProto.FLOAT16:
            data = self.context.calib if self.context.calib is not None else self.context.eval
            if data is not None:
                self._block_from_ranges(proto, data, reasons, "calibration data" if self.context.calib else "eval data")
            elif opts.default_block_list:
                default = blocklist.op_nodes(proto, blocklist.DEFAULT_OVERFLOW_OPS)
                for name in default:
                    reasons.setdefault(name, "default block list")
                notes.append(f"no data: {len(default)} overflow-prone node(s) kept in fp32 by the default list; "
                             "--calib-data or --eval-data makes the choice from real ranges (safer and faster)")
        return reasons

    def _block_from_ranges(self, proto: onnx.ModelProto, data: DataSet, reasons: dict[str, str], source: str) -> int:
        from graphopt.calibration import collect_ranges

        ranges = collect_ranges(proto, data.take(self.options.max_check_samples),
                                batch_size=data.batch_size_for(input_specs(ir.from_proto(proto))),
                                description="fp16 ranges")
        threshold = blocklist.overflow_threshold(self.options.safety_margin)
        added = 0
        for node, tensor in blocklist.overflow_nodes(proto, ranges, threshold).items():
            if node not in reasons:
                reasons[node] = f"range > {threshold:.0f} on {source} ('{tensor}')"
                added += 1
        return added

    # -- conversion --------------------------------------------------------------------------

    def _convert_for_target(self, proto: onnx.ModelProto, reasons: dict[str, str], notes: list[str]) -> _Attempt:
        attempt = self._convert(proto, set(reasons))
        original = _names(proto)
        for _ in range(6):  # blocking a node changes its neighbours' types: repeat until stable
            added = 0
            if self.context.target.kind == "cpu":
                for name, op in blocklist.nodes_without_cpu_kernel(attempt.proto, self.low).items():
                    if name in original and name not in reasons:
                        reasons[name] = f"no CPU {self.label} kernel ({op})"
                        added += 1
            candidates = original - set(reasons)
            for name, op in blocklist.isolated_low_nodes(attempt.proto, self.low, candidates).items():
                reasons[name] = f"isolated between fp32 nodes ({op}); saves its Casts"
                added += 1
            if not added:
                break
            attempt = self._convert(proto, set(reasons))
        return attempt

    def _convert(self, proto: onnx.ModelProto, fp32_nodes: set[str]) -> _Attempt:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        copy = typecheck.strip_value_info(proto)  # the library re-infers; stale entries mislead it
        log = self.context.warnings if self._context is not None else WarningLog()
        with captured_warnings(log), _shapes_from_dims(copy):
            converted = convert_float_to_float16(
                copy, keep_io_types=self.options.keep_io_types, op_block_list=[],
                node_block_list=sorted(fp32_nodes), force_fp16_initializers=False)
        if self.low == TensorProto.BFLOAT16:
            _retype_to_bf16(converted, proto)
        fixes: collections.Counter[str] = collections.Counter()
        fixes["weights packed as raw bytes"] += pack_16bit_initializers(converted)
        fixes["duplicate casts dropped"] += typecheck.drop_duplicate_producers(converted)
        converted = _sorted(converted)  # the library appends its Casts at the end; inference needs order
        fixes["mixed-type inputs cast"] += typecheck.fix_mixed_float_inputs(converted, fp32_nodes, self.low)
        model = large.from_proto(typecheck.infer(converted))
        original_casts = {n.name for g in typecheck.iter_graphs(proto.graph) for n in g.node if n.op_type == "Cast"}
        fixes.update(typecheck.remove_redundant_casts(model, original_casts))
        ir_common.TopologicalSortPass()(model)
        ir_common.NameFixPass()(model)
        result = large.to_proto(model)
        problems = typecheck.check_types(result)
        if problems:
            raise PassFailedError(f"{self.label} conversion left an inconsistent graph: {problems[0]}"
                                  f"{f' (+{len(problems) - 1} more)' if len(problems) > 1 else ''}; "
                                  f"keep that node in fp32 with --fp16-block-nodes")
        casts = _count_casts(result) - len(original_casts)
        return _Attempt(result, casts, {k: v for k, v in fixes.items() if v})

    # -- self-check --------------------------------------------------------------------------

    def _check_data(self, model: ir.Model) -> DataSet:
        data = self.context.eval if self.context.eval is not None else self.context.calib
        if data is None:
            data = probe_data(input_specs(model))
        return data.take(self.options.max_check_samples)

    @staticmethod
    def _feeds(data: DataSet, batch: int, sample: int | None) -> dict[str, np.ndarray]:
        return data.feed(sample or 0, batch)

    def _numeric_check(self, converted: onnx.ModelProto, data: DataSet, batch: int,
                       reference: dict[str, np.ndarray]) -> tuple[verify.CheckResult | None, onnx.ModelProto]:
        candidate, self._emulated = verify.emulation_copy(_fp32_io(converted), self.low)
        try:
            outputs = verify.run_outputs(candidate, data, batch)
        except Exception as exc:
            self._run_error = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            return None, candidate
        return verify.self_check(reference, outputs, self.options.tolerance_points), candidate

    def _block_around(self, proto: onnx.ModelProto, converted: onnx.ModelProto,
                      culprit: tuple[str, onnx.NodeProto | None] | None, reasons: dict[str, str]) -> int:
        """Keep in fp32 the original nodes that produce or consume the first non-finite tensor."""
        if culprit is None:
            return 0
        tensor, _ = culprit
        producers = {o: n for n in converted.graph.node for o in n.output}
        original_tensors = {t for n in proto.graph.node for t in list(n.input) + list(n.output)}
        original_tensors |= {i.name for i in proto.graph.input}
        seen = set()
        while tensor not in original_tensors and tensor in producers and tensor not in seen:
            seen.add(tensor)
            tensor = producers[tensor].input[0]  # walk back through inserted Casts
        added = 0
        for node in proto.graph.node:
            if tensor in node.output or tensor in node.input:
                if node.name not in reasons:
                    reasons[node.name] = f"self-check: '{tensor}' overflowed in {self.label}"
                    added += 1
        return added

    def _fail(self, model: ir.Model, proto: onnx.ModelProto, attempt: _Attempt, check: verify.CheckResult,
              data: DataSet, batch: int) -> GraphoptPassResult:
        where = check.message
        if not check.finite:
            candidate, _ = verify.emulation_copy(_fp32_io(attempt.proto), self.low)
            culprit = verify.first_non_finite(proto, candidate, self._feeds(data, batch, check.failing_sample))
            if culprit is not None:
                tensor, node = culprit
                origin = f" (output of {node.op_type} '{node.name}')" if node is not None else ""
                where = f"tensor '{tensor}'{origin} is the first to become NaN/Inf; {check.message}"
        message = (f"{self.label} self-check failed on {data.source} after {self.options.max_repairs} repair(s): "
                   f"{where}; keep it in fp32 with --fp16-block-nodes, or give --calib-data")
        if self.options.on_failure == "rollback":
            return self.result(model.clone(), False, {"rolled_back": True}, [f"rolled back: {message}"])
        raise QualityGateError(message)

    def _stats(self, model: ir.Model, attempt: _Attempt, reasons: dict[str, str],
               check: verify.CheckResult | None, seconds: float) -> dict:
        why = collections.Counter(r.split(" (")[0].split(" on ")[0].split(" '")[0] for r in reasons.values())
        stats: dict = {
            "precision": self.label,
            "nodes_kept_fp32": len(reasons),
            "casts_added": attempt.casts_added,
            "conversion_seconds": round(seconds, 3),
        }
        if why:
            stats["kept_fp32_because"] = ", ".join(f"{k}×{v}" for k, v in why.most_common())
        if attempt.fixes:
            stats["graph_fixes"] = ", ".join(f"{k} {v}" for k, v in attempt.fixes.items())
        stats.update(_weight_rounding(model, attempt.proto, self.low))
        if check is not None:
            stats["self_check"] = (f"finite, worst cosine drop {check.worst_drop:.3g} pts "
                                   f"('{check.worst_output}', max |Δ| {check.max_abs_error:.3g})")
        emulated = getattr(self, "_emulated", 0)
        if self.context.target.kind != "cpu":
            stats["emulated_nodes"] = emulated
        return stats

    def result(self, model, modified, stats=None, notes=None) -> GraphoptPassResult:
        notes = list(notes or [])
        if modified and self.context.target.kind != "cpu":
            emulated = getattr(self, "_emulated", 0)
            notes.append(f"checked on the CPU: {emulated} node(s) without a CPU {self.label} kernel were emulated "
                         f"(fp32 compute, {self.label} rounding); the {self.context.target.kind} kernels' own accuracy "
                         f"and speed were not measured here")
        return super().result(model, modified, stats, notes)


@contextlib.contextmanager
def _shapes_from_dims(proto: onnx.ModelProto) -> Iterator[None]:
    """For a skeleton (:mod:`graphopt.large`): the converter reads each weight it converts with
    ``numpy_helper.to_array`` only to learn its shape, which a placeholder has no bytes for; while it
    runs, that shape comes from the tensor's ``dims`` (the same tuple). Nothing else it does reads
    the bytes of a placeholder (its element type is retyped, the store converts the values)."""
    if not large.placeholders(proto):
        yield
        return
    from onnxruntime.transformers import float16 as library

    original = library.make_value_info_from_tensor
    library.make_value_info_from_tensor = lambda tensor: onnx.helper.make_tensor_value_info(
        tensor.name, tensor.data_type, list(tensor.dims))
    try:
        yield
    finally:
        library.make_value_info_from_tensor = original


def _sorted(proto: onnx.ModelProto) -> onnx.ModelProto:
    model = ir.from_proto(proto)
    ir_common.TopologicalSortPass()(model)
    return ir.to_proto(model)


def _names(proto: onnx.ModelProto) -> set[str]:
    return {n.name for g in typecheck.iter_graphs(proto.graph) for n in g.node}


def pack_16bit_initializers(model: onnx.ModelProto) -> int:
    """Store fp16/bf16 initializers as 2 bytes per value in ``raw_data``; returns how many moved.

    The converter writes them to ``int32_data``, where protobuf spends a varint of 1–3 bytes (and
    4 bytes of field overhead per tensor) on each 16-bit pattern: a ResNet-18 came out 24 % larger
    than its fp16 weights. The bit patterns are the same, so the values do not change.
    """
    moved = 0
    for graph in typecheck.iter_graphs(model.graph):
        for tensor in graph.initializer:
            if tensor.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16) and len(tensor.int32_data):
                tensor.raw_data = np.asarray(tensor.int32_data, dtype=np.uint16).tobytes()
                tensor.ClearField("int32_data")
                moved += 1
    return moved


def _count_casts(proto: onnx.ModelProto) -> int:
    return sum(1 for g in typecheck.iter_graphs(proto.graph) for n in g.node if n.op_type == "Cast")


def _fp32_io(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose low-precision graph inputs/outputs are float32 (Casts at the edges, names kept),
    so the self-check feeds and compares the same arrays as the fp32 model."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    graph = copy.graph
    head, tail, renames = [], [], {}
    for vi in graph.input:
        low = vi.type.tensor_type.elem_type
        if low in typecheck.LOW_TYPES:
            inner = f"{vi.name}__low"
            renames[vi.name] = inner
            head.append(onnx.helper.make_node("Cast", [vi.name], [inner], to=low, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for vi in graph.output:
        if vi.type.tensor_type.elem_type in typecheck.LOW_TYPES:
            inner = f"{vi.name}__low"
            renames[vi.name] = inner
            tail.append(onnx.helper.make_node("Cast", [inner], [vi.name], to=TensorProto.FLOAT, name=f"{inner}_cast"))
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    if not renames:
        return copy
    for node in graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    nodes = head + list(graph.node) + tail
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [vi for vi in graph.value_info if vi.name not in renames]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return copy


def _retype_to_bf16(converted: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Rewrite every fp16 type the converter wrote as bf16; weights re-encoded from their fp32 values."""
    import ml_dtypes

    fp32_values = {i.name: i for g in typecheck.iter_graphs(original.graph) for i in g.initializer
                   if i.data_type == TensorProto.FLOAT}
    detached = large.placeholders(converted)  # their values come from the weight store, by type

    def to_bf16(tensor: onnx.TensorProto) -> onnx.TensorProto:
        source = fp32_values.get(tensor.name)
        array = numpy_helper.to_array(source if source is not None else tensor).astype(np.float32)
        return numpy_helper.from_array(array.astype(ml_dtypes.bfloat16), tensor.name)

    for graph in typecheck.iter_graphs(converted.graph):
        for init in graph.initializer:
            if init.data_type == TensorProto.FLOAT16 and init.name in detached:
                init.data_type = TensorProto.BFLOAT16
            elif init.data_type == TensorProto.FLOAT16:
                init.CopyFrom(to_bf16(init))
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
                vi.type.tensor_type.elem_type = TensorProto.BFLOAT16
        for node in graph.node:
            for attr in node.attribute:
                if attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i == TensorProto.FLOAT16:
                    attr.i = TensorProto.BFLOAT16
                elif attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == TensorProto.FLOAT16:
                    attr.t.CopyFrom(to_bf16(attr.t))


def _weight_rounding(model: ir.Model, converted: onnx.ModelProto, low: int) -> dict:
    """How many weights the conversion changed beyond ordinary rounding (one report line, not one per tensor)."""
    lowered = {i.name for i in converted.graph.initializer if i.data_type == low}
    tiny = clipped = total = 0
    smallest_normal = 6.104e-05 if low == TensorProto.FLOAT16 else 1.18e-38
    largest = blocklist.FP16_MAX if low == TensorProto.FLOAT16 else 3.39e38
    for name, value in model.graph.initializers.items():
        if name not in lowered or value.const_value is None or value.dtype != ir.DataType.FLOAT:
            continue
        for chunk in large.chunks(value.const_value):  # a weight in a file is read, never mapped
            array = np.abs(chunk)
            total += array.size
            tiny += int(np.count_nonzero((array > 0) & (array < smallest_normal)))
            clipped += int(np.count_nonzero(array > largest))
    stats = {"weights_converted": total}
    if tiny or clipped:
        parts = []
        if tiny:
            parts.append(f"{tiny} weights below {'fp16' if low == TensorProto.FLOAT16 else 'bf16'} resolution rounded")
        if clipped:
            parts.append(f"{clipped} weights clipped to ±{largest:g}")
        stats["weight_rounding"] = "; ".join(parts)
    return stats
