"""``graphopt compare``: run a reference and a candidate on the same data and judge the candidate.

Either side is an ONNX file (run by onnxruntime on ``--provider``) or an engine directory (run on the
target it was built for — so ``graphopt compare model.onnx engine_dir/`` is ORT-CPU against TensorRT
or the CUDA provider for the same model). Both run batch by batch over the data (the reference's fixed
batch, else 16, capped by a TensorRT profile's MAX; one feed per sample when the inputs share no batch
axis, :mod:`graphopt.data`), their outputs are matched by name and compared
by :func:`graphopt.verify.compare_outputs` — the same metrics the optimizer's report uses — and judged
by a :class:`graphopt.verify.Tolerance`.

Default rule when none is given: ``atol 1e-5, rtol 1e-3`` (numerically the same model). Any of
``atol`` / ``rtol`` / ``min_cosine`` / ``max_drop`` given replaces the default as a whole.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from graphopt.data import DataSet, batch_axis
from graphopt.engines.load import OpenedEngine, open_engine
from graphopt.errors import InputError
from graphopt.profiling.feeds import cast_to_inputs
from graphopt.verify import Comparison, MetricChoice, Tolerance, check_metric_choice, compare_outputs

DEFAULT_TOLERANCE = Tolerance(atol=1e-5, rtol=1e-3)
PREFERRED_BATCH = 16


@dataclasses.dataclass
class CompareResult:
    reference: dict[str, Any]
    candidate: dict[str, Any]
    comparison: Comparison
    tolerance: Tolerance
    failures: list[str]
    samples: int

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "candidate": self.candidate, "samples": self.samples,
                "tolerance": self.tolerance.to_dict(), "passed": self.passed, "failures": self.failures,
                **self.comparison.to_dict()}


def compare_engines(reference: str | os.PathLike, candidate: str | os.PathLike, data: DataSet, *,
                    provider: str | None = None, candidate_provider: str | None = None,
                    tolerance: Tolerance | None = None, metric: MetricChoice = "auto", threads: int | None = None,
                    allow_fallback: bool = False) -> CompareResult:
    """Run both on ``data`` and compare (see the module docstring). ``provider`` applies to ONNX files on
    either side unless ``candidate_provider`` sets the candidate's."""
    check_metric_choice(metric, data.labels)
    tolerance = tolerance or DEFAULT_TOLERANCE
    engines = []
    for path, chosen in ((reference, provider), (candidate, candidate_provider or provider)):
        engines.append(open_engine(path, chosen if not os.path.isdir(path) else None, threads=threads,
                                   allow_fallback=allow_fallback))
    ref_engine, cand_engine = engines
    data = data.check_against(ref_engine.input_specs, "comparison")
    batch = _batch(engines, data)
    ref_out = _run_all(ref_engine, data, batch)
    cand_out = _run_all(cand_engine, data, batch)
    missing = sorted(set(ref_out) - set(cand_out))
    if missing:
        raise InputError(f"candidate has no output(s) {', '.join(map(repr, missing))} (it has {', '.join(cand_out)})")
    comparison = compare_outputs(ref_out, cand_out, data.labels, metric, tolerance)
    return CompareResult(_describe(ref_engine, reference), _describe(cand_engine, candidate), comparison, tolerance,
                         comparison.failures(tolerance), len(data))


def _describe(engine: OpenedEngine, path) -> dict[str, Any]:
    return {"path": str(path), "kind": engine.kind, "requested": engine.requested, "providers": engine.providers,
            "fallback_reason": engine.fallback_reason, "warnings": engine.warnings}


def _batch(engines: list[OpenedEngine], data: DataSet) -> int:
    """Samples per feed: one for stacked data (no shared batch axis), else the fixed batch, else
    :data:`PREFERRED_BATCH` capped by a profile's MAX."""
    if data.stacked:
        return 1
    axes = [batch_axis(e.input_specs) for e in engines]
    fixed = {axis.size for axis in axes if axis.kind == "fixed"}
    if len(fixed) > 1:
        raise InputError(f"reference and candidate have different fixed batch sizes {sorted(fixed)}")
    if fixed:
        batch = fixed.pop()
        if len(data) % batch:
            raise InputError(f"the models take exactly {batch} samples at a time; the data has {len(data)}, "
                             f"not a multiple of {batch}")
        return batch
    limits = [r.max[0] for e in engines for r in e.profile.values() if r.max]
    return max(1, min([PREFERRED_BATCH, *limits]))


def _run_all(engine: OpenedEngine, data: DataSet, batch: int) -> dict[str, np.ndarray]:
    specs = engine.input_specs
    collected: dict[str, list[np.ndarray]] = {}
    for feeds in data.batches(batch):
        for name, value in engine.run(cast_to_inputs(feeds, specs)).items():
            array = np.asarray(value)
            collected.setdefault(name, []).append(array.astype(np.float32) if array.dtype == np.float16 else array)
    return {name: data.join(parts) for name, parts in collected.items()}
