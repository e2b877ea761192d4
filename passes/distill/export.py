"""Export the trained student to ONNX and prove the file computes what the torch module computes.

Export writes the trained weights and BatchNorm statistics into a copy of the student's own graph
(:func:`~graphopt.passes.distill.torch_graph.write_back`): input/output names, element types and
dynamic axes stay exactly the teacher's (the student was checked against them), and no tracing
exporter can drop a dynamic axis or rename an output. The file is then simplified like any input
(:class:`~graphopt.passes.simplify.SimplifyPass`: BatchNorm folded into the convolutions, constants
folded), since the student trained with its BatchNorms and inference does not need them.

Verification: onnxruntime runs the exported file on up to :data:`VERIFY_SAMPLES` evaluation samples
and every output must equal the torch module's (eval mode) to within :data:`VERIFY_RTOL` of the
output's largest magnitude. A mismatch means the torch graph and onnxruntime disagree on some op, and
the student is not used.
"""

from __future__ import annotations

import contextlib

import numpy as np
import onnx_ir as ir

from graphopt.data import DataSet, input_specs
from graphopt.engines import ort as ort_engine
from graphopt.errors import PassFailedError
from graphopt.passes.distill.torch_graph import TorchGraph, write_back
from graphopt.passes.distill.train import evaluate, resolve_device
from graphopt.passes.simplify import SimplifyPass

VERIFY_SAMPLES = 64
VERIFY_RTOL = 1e-4


def max_relative_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> dict[str, float]:
    """Per output: max |ref − cand| / max |ref|."""
    errors = {}
    for name, ref in reference.items():
        ref64, cand64 = ref.astype(np.float64), np.asarray(candidate[name]).astype(np.float64)
        scale = max(float(np.max(np.abs(ref64), initial=0.0)), 1e-12)
        errors[name] = float(np.max(np.abs(ref64 - cand64), initial=0.0)) / scale
    return errors


def export_student(module: TorchGraph, student: ir.Model, data: DataSet, device: str = "cpu") -> tuple[ir.Model, float]:
    """The trained student as an ONNX model, and the worst relative error of the verification."""
    exported = write_back(module, student)
    with contextlib.suppress(Exception):  # simplification is an optimisation; the check below judges it
        exported = SimplifyPass()(exported).model
    sample = data.take(VERIFY_SAMPLES)
    batch = sample.batch_size_for(input_specs(student), preferred=len(sample))
    expected = evaluate(module, sample, batch, resolve_device(device))
    got = ort_engine.build(exported).run_batches(sample.batches(batch), sample.join)
    errors = max_relative_error(expected, got)
    worst = max(errors, key=errors.get)
    if not np.isfinite(errors[worst]) or errors[worst] > VERIFY_RTOL:
        raise PassFailedError(f"distill: the exported student differs from the trained torch module on output "
                              f"'{worst}' (max relative error {errors[worst]:.2e} > {VERIFY_RTOL:g}); not used")
    return exported, errors[worst]
