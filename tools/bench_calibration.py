"""int8 benchmarks: calibration memory/time, and CPU latency/accuracy against onnxruntime's quantize_static.

Usage::

    python tools/bench_calibration.py memory  [--model resnet18-224] [--samples 512] [--rounds 3]
    python tools/bench_calibration.py latency [--model resnet18-224] [--runs 30]

``memory``: each calibrator runs in its own subprocess on the same ``N`` samples (the model's calib
images, repeated with a per-copy brightness shift until ``N``); the child reports its wall time
and peak RSS (``getrusage`` ``ru_maxrss``, the whole process: Python, the data, onnxruntime).
Goal: graphopt Entropy within 1.5 GB and ≤ 1.2× the time of onnxruntime's MinMax calibrator.

``latency``: fp32, graphopt ``--int8`` (cpu target) and onnxruntime ``quantize_static`` with its
default options (QDQ, s8 activations, per-tensor) and with hand-tuned options (QDQ, u8 activations,
s8 per-channel weights), all calibrated on the same data; medians of batch-1 runs with 2 threads (no spin-wait),
measured round-robin in one process so the ratios share the same machine state; agreement of
top-1 (or accuracy with labels) against fp32 on the eval data.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphopt.profiling.stats import median_ms  # noqa: E402 (after the path insert)
from graphopt.profiling.timing import interleaved_timings  # noqa: E402

THREADS = 2
CALIB_BATCH = 8


def _paths(name: str):
    from models.registry import build_model

    return build_model(name)


def _samples(calib_path: Path, count: int) -> dict[str, np.ndarray]:
    with np.load(calib_path) as archive:
        base = {k: archive[k] for k in archive.files if k != "labels"}
    reps = -(-count // len(next(iter(base.values()))))
    out = {}
    for key, array in base.items():
        if array.dtype.kind == "f":
            shifts = np.linspace(-0.2, 0.2, reps, dtype=np.float32)
            out[key] = np.concatenate([array + s for s in shifts])[:count]
        else:
            out[key] = np.concatenate([array] * reps)[:count]
    return out


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# -- memory / time ------------------------------------------------------------------------------

def calib_child(model_path: str, calib_path: str, method: str, samples: int) -> dict:
    """One calibrator run (inside its own process)."""
    import onnx

    from graphopt.data import DataSet
    from graphopt.passes.int8.scheme import quantizable_nodes, scheme_for, tensors_to_calibrate
    from graphopt.target import make_target

    inputs = _samples(Path(calib_path), samples)
    model = onnx.load(model_path)
    rss_before = _peak_rss_mb()
    start = time.perf_counter()
    if method.startswith("graphopt-"):
        from graphopt.passes.int8.calibration import calibrate

        scheme = scheme_for(make_target("cpu"))
        tensors = tensors_to_calibrate(model, quantizable_nodes(model, scheme))
        result = calibrate(model, DataSet(inputs), tensors, method.split("-", 1)[1], batch_size=CALIB_BATCH)
        count = len(result.ranges)
    else:
        from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.starts = iter(range(0, samples, CALIB_BATCH))

            def get_next(self):
                start = next(self.starts, None)
                return None if start is None else {k: v[start:start + CALIB_BATCH] for k, v in inputs.items()}

        ort_method = {"ort-minmax": CalibrationMethod.MinMax, "ort-entropy": CalibrationMethod.Entropy,
                      "ort-percentile": CalibrationMethod.Percentile}[method]
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(model_path, [], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=ort_method)
            calibrator.collect_data(Reader())
            count = len(calibrator.compute_data().data)
    seconds = time.perf_counter() - start
    return {"method": method, "samples": samples, "seconds": seconds, "peak_rss_mb": _peak_rss_mb(),
            "rss_before_mb": rss_before, "tensors": count}


def run_memory(args) -> None:
    """``--rounds`` rounds; each runs every method once (order rotated per round), and each method's
    time is divided by ORT MinMax's time *of the same round*; the table shows medians over rounds
    (this VM's speed drifts by ±20 % between minutes, far more than within one round)."""
    model, calib, _ = _paths(args.model)
    methods = args.methods.split(",")
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for round_index in range(args.rounds):
        shift = round_index % len(methods)
        for method in methods[shift:] + methods[:shift]:
            command = [sys.executable, __file__, "_calib", str(model), str(calib), method, str(args.samples)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
            if done.returncode != 0:
                row = {"method": method, "round": round_index,
                       "error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]}
            else:
                row = {**json.loads(done.stdout.strip().splitlines()[-1]), "round": round_index}
            runs[method].append(row)
            print(json.dumps(row), flush=True)
    base = {r["round"]: r["seconds"] for r in runs.get("ort-minmax", []) if "seconds" in r}
    print(f"\n{args.model}, {args.samples} samples, batch {CALIB_BATCH}, median of {args.rounds} round(s)")
    print(f"{'method':<22}{'time s':>9}{'× ORT MinMax':>14}{'(per round)':>22}{'peak RSS MB':>13}")
    for method in methods:
        good = [r for r in runs[method] if "seconds" in r]
        if not good:
            print(f"{method:<22}  failed: {runs[method][-1]['error']}")
            continue
        ratios = [r["seconds"] / base[r["round"]] for r in good if r["round"] in base]
        median_ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
        per_round = " ".join(f"{x:.2f}" for x in ratios)
        print(f"{method:<22}{statistics.median(r['seconds'] for r in good):>9.1f}{median_ratio:>14}{per_round:>22}"
              f"{max(r['peak_rss_mb'] for r in good):>13.0f}")


# -- latency ------------------------------------------------------------------------------------

def _ort_quantize(model_path: Path, inputs: dict[str, np.ndarray], out: Path, **kwargs) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.starts = iter(range(0, len(next(iter(inputs.values()))), CALIB_BATCH))

        def get_next(self):
            start = next(self.starts, None)
            return None if start is None else {k: v[start:start + CALIB_BATCH] for k, v in inputs.items()}

    quantize_static(str(model_path), str(out), Reader(), quant_format=QuantFormat.QDQ, **kwargs)
    return out


def _session(path_or_model):
    from graphopt.engines import ort as ort_engine

    if isinstance(path_or_model, Path):
        path_or_model = path_or_model.read_bytes()
    return ort_engine.build(path_or_model, threads=THREADS, spinning=False).session


def run_latency(args) -> None:
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import graphopt
    from graphopt.data import load_data
    from graphopt.passes.int8 import Int8Options, Int8Pass
    from graphopt.passes.simplify import SimplifyPass
    from graphopt.verify import compare_outputs

    model_path, calib_path, eval_path = _paths(args.model)
    calib = load_data(calib_path)
    evaluation = load_data(eval_path)
    variants = {"fp32": model_path}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        started = time.perf_counter()
        result = graphopt.optimize(model_path, tmp / "graphopt.onnx", passes=[SimplifyPass(), Int8Pass(Int8Options(
            calib_method=args.method))], calib_data=calib, target="cpu", cache=False, latency_budget=0)
        print(f"graphopt int8: {time.perf_counter() - started:.1f}s, {result.report.rows[-1].stats}", flush=True)
        variants["graphopt int8"] = tmp / "graphopt.onnx"
        if not args.skip_s8:
            variants["graphopt int8 (s8 act)"] = tmp / "graphopt_s8.onnx"
            graphopt.optimize(model_path, variants["graphopt int8 (s8 act)"], passes=[SimplifyPass(), Int8Pass(
                Int8Options(calib_method=args.method, activations="int8"))], calib_data=calib, target="cpu", cache=False,
                latency_budget=0)
        pre = tmp / "pre.onnx"
        previous = os.getcwd()
        os.chdir(tmp)  # ORT's symbolic shape inference may drop a temp file into the working directory
        try:
            quant_pre_process(str(model_path), str(pre))
        finally:
            os.chdir(previous)
        variants["ORT default"] = _ort_quantize(model_path, calib.inputs, tmp / "ort_default.onnx")
        variants["ORT u8s8 per-channel"] = _ort_quantize(pre, calib.inputs, tmp / "ort_u8s8.onnx",
                                                         activation_type=QuantType.QUInt8,
                                                         weight_type=QuantType.QInt8, per_channel=True)
        variants["ORT u8s8 pc conv-only"] = _ort_quantize(pre, calib.inputs, tmp / "ort_u8s8_conv.onnx",
                                                          activation_type=QuantType.QUInt8,
                                                          weight_type=QuantType.QInt8, per_channel=True,
                                                          op_types_to_quantize=["Conv", "Gemm", "MatMul", "Add",
                                                                                "Relu", "MaxPool",
                                                                                "GlobalAveragePool", "Flatten"])
        sessions = {name: _session(path) for name, path in variants.items()}
        reference = _outputs(sessions["fp32"], evaluation)
        quality = {name: compare_outputs(reference, _outputs(s, evaluation), evaluation.labels) for name, s in
                   sessions.items()}
        feeds = {k: v[:1] for k, v in evaluation.inputs.items()}
        runners = {name: functools.partial(session.run, None, feeds) for name, session in sessions.items()}
        timings = interleaved_timings(runners, warmup=3, iterations=args.runs)
    medians = {name: median_ms(t) for name, t in timings.seconds.items()}
    print(f"\n{args.model}: batch 1, {THREADS} threads, median of {args.runs} interleaved rounds (rotating order)")
    print(f"{'variant':<26}{'ms':>8}{'/ fp32':>8}{'/ best ORT':>11}  quality vs fp32")
    best_ort = min(v for k, v in medians.items() if k.startswith("ORT"))
    for name, ms in medians.items():
        print(f"{name:<26}{ms:>8.2f}{ms / medians['fp32']:>8.3f}{ms / best_ort:>11.3f}  {quality[name].summary()}")


def _outputs(session, data):
    names = [o.name for o in session.get_outputs()]
    collected = {n: [] for n in names}
    for feeds in data.batches(8):
        for n, v in zip(names, session.run(None, feeds)):
            collected[n].append(v)
    return {n: np.concatenate(v) for n, v in collected.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_calib":
        _, _, model, calib, method, samples = sys.argv
        print(json.dumps(calib_child(model, calib, method, int(samples))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    mem = sub.add_parser("memory")
    mem.add_argument("--model", default="resnet18-224")
    mem.add_argument("--samples", type=int, default=512)
    mem.add_argument("--methods", default="ort-minmax,graphopt-minmax,graphopt-entropy,graphopt-percentile")
    mem.add_argument("--timeout", type=int, default=1800)
    mem.add_argument("--rounds", type=int, default=3, help="rounds of every method; the table shows medians")
    lat = sub.add_parser("latency")
    lat.add_argument("--model", default="resnet18-224")
    lat.add_argument("--runs", type=int, default=30)
    lat.add_argument("--method", default=None, help="graphopt calibration method [default: the target's]")
    lat.add_argument("--skip-s8", action="store_true", help="skip the s8-activation graphopt variant")
    args = parser.parse_args()
    run_memory(args) if args.mode == "memory" else run_latency(args)


if __name__ == "__main__":
    main()
