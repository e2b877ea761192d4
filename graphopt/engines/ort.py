"""onnxruntime sessions: created quietly, with the providers that actually loaded verified.

onnxruntime falls back to the CPU provider without an error when a requested provider cannot
load (missing CUDA libraries, no GPU); :class:`OrtEngine` records ``session.get_providers()``
so reports say what really ran.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
import onnx_ir as ir

from graphopt.target import Target

QUIET = 3  # onnxruntime log severity: errors only


def session_options(threads: int | None = None, optimization: str = "all", priority_order: bool = False,
                    spinning: bool = True):
    """Quiet ``SessionOptions``; ``threads`` pins intra-op threads (benchmarks use 2).

    ``spinning=False``: idle intra-op threads sleep instead of spin-waiting. Needed whenever several
    sessions are timed in turn (side-by-side benchmarks): the spinning workers of the session that
    just ran take the cores from the next one. Measured on the 2-core VM, ResNet-18 224² fp32 /
    graphopt int8 / ORT int8 interleaved: 50–62 / 17 / 16–20 ms with spinning, 19–22 / 6.6 / 6.6–6.7
    ms without, and the fp32 spread (IQR / median) down from 0.10–0.32 to 0.02–0.21.

    ``priority_order``: onnxruntime's priority-based execution order, which runs a node's readers
    soon after it (measured on the calibration graph of a 224×224 ResNet-18, whose min/max/sample
    nodes hang off every activation: peak RSS 825 → 433 MB at batch 8; the default order ran them
    last and kept every activation alive)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = QUIET
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    options.graph_optimization_level = levels[optimization]
    if priority_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


@dataclasses.dataclass
class OrtEngine:
    """An onnxruntime session plus the providers that really loaded."""

    session: object
    providers: list[str]
    weights: list = dataclasses.field(default_factory=list, repr=False)
    """``OrtValue``s of weights handed to the session by reference (kept alive with it)."""

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self.session.get_inputs()]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.session.get_outputs()]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, feeds)
        return dict(zip(self.output_names, outputs))

    def run_batches(self, batches: Iterable[dict[str, np.ndarray]],
                    join: Callable[[list[np.ndarray]], np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Run every batch and join each output's parts: ``join`` (a data set's
        :meth:`~graphopt.data.DataSet.join`), else concatenated along axis 0."""
        collected: dict[str, list[np.ndarray]] = {}
        for feeds in batches:
            for name, value in self.run(feeds).items():
                collected.setdefault(name, []).append(np.asarray(value))
        return {name: (join or _concat)(parts) for name, parts in collected.items()}


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    if parts[0].ndim == 0:
        return np.stack(parts)
    return np.concatenate(parts, axis=0)


def build(model: ir.Model | onnx.ModelProto | bytes, target: Target | None = None, *,
          threads: int | None = None, providers: Sequence[str] | None = None,
          optimization: str = "all", priority_order: bool = False, spinning: bool = True) -> OrtEngine:
    """Create an onnxruntime session for ``target`` (CPU when ``None``); options as :func:`session_options`.

    A model with detached weights (:mod:`graphopt.large`: over protobuf's limit, or weights in
    external-data files) is built from its skeleton: onnxruntime maps the weights that lie in a file
    and copies the others once; prepacking and constant folding stay off (each would copy weights)."""
    import onnxruntime as ort


    wanted = list(providers) if providers else (target.providers if target else ["CPUExecutionProvider"])
    available = set(ort.get_available_providers())
    wanted = [p for p in wanted if p in available] or ["CPUExecutionProvider"]
    options = session_options(threads, optimization, priority_order, spinning)
    source, disabled, weights = session_source(model, options)
    session = ort.InferenceSession(source, options, providers=wanted, disabled_optimizers=disabled)
    return OrtEngine(session, list(session.get_providers()), weights)


def session_source(model: ir.Model | onnx.ModelProto | bytes | str | os.PathLike,
                   options) -> tuple[bytes | str, list[str], list]:
    """What ``ort.InferenceSession`` is built from for ``model``: ``(source, disabled_optimizers, weights)``.

    A path stays a path, so onnxruntime resolves its external data beside the file. A model with
    detached weights (:mod:`graphopt.large`: over protobuf's limit, or weights in external-data
    files) becomes its skeleton: ``options`` get the folder onnxruntime maps the file weights from
    and the ``OrtValue``s of the others (``weights``: keep them alive as long as the session);
    prepacking and constant folding stay off, as each would copy the weights once more (both are
    exact to leave out)."""
    from graphopt import large

    if isinstance(model, str | os.PathLike):
        return str(model), [], []
    source = large.session_input(model)
    if source.folder is None and not source.names:
        return source.model, [], []
    if source.folder is not None:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", source.folder)
    if source.names:
        options.add_external_initializers(source.names, source.values)
    options.add_session_config_entry("session.disable_prepacking", "1")
    return source.model, ["ConstantFolding"], source.values


def probe_model() -> bytes:
    """A serialized one-node model (``y = Identity(x)``) for asking which providers load."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "probe",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto.SerializeToString()


def providers_that_load(providers: Sequence[str]) -> list[str]:
    """Providers onnxruntime really loads for a one-node model (what it prints meanwhile is captured)."""
    from graphopt.engines.capture import captured_output

    try:
        with captured_output():
            return build(probe_model(), providers=providers).providers
    except Exception:
        return ["CPUExecutionProvider"]


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(bool)": np.bool_,
}


def ort_type_name(ort_type: str) -> str:
    """``tensor(float)`` → ``float32`` (numpy's name), unknown types unchanged."""
    dtype = _ORT_TYPES.get(ort_type)
    return np.dtype(dtype).name if dtype is not None else ort_type


def session_input_specs(session) -> list:
    """The session's inputs as :class:`graphopt.data.InputSpec` (symbolic dims as names, unknown as ``None``)."""
    from graphopt.data import InputSpec
    from graphopt.errors import InputError

    specs = []
    for value in session.get_inputs():
        dtype = _ORT_TYPES.get(value.type)
        if dtype is None:
            raise InputError(f"model input '{value.name}' has type {value.type}, which graphopt cannot feed")
        shape = tuple(d if isinstance(d, int) else (d or None) for d in value.shape)
        specs.append(InputSpec(value.name, np.dtype(dtype), shape))
    return specs
