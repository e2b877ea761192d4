"""Models over protobuf's 2 GB limit through every pass: peak memory and time.

Usage::

    python tools/bench_large.py [--size-gb 2.3] [--passes simplify,fp16,int8] [--dir /tmp/graphopt-large]
    python tools/bench_large.py --generate-only --size-gb 2.3      # only write the model

The model is a chain of ``MatMul(4096×4096) → Add(bias) → Relu`` layers (the shape of an LLM's MLP
blocks), as many as make ``--size-gb`` of float32 weights, saved with external data (written one
tensor at a time, so generating it takes one layer's memory). The calibration / evaluation set is 16
samples of ``x`` (``N×4096``).

Each pass runs ``graphopt optimize`` as a user would (``simplify``; ``--fp16 --target cuda``, the
fp16 use case, emulated on this CPU; ``--int8 --calib-data`` on ``cpu``), with a pass cache in the
work folder, in a fresh child process; the child's peak RSS is ``getrusage(RUSAGE_CHILDREN)`` of a
launcher process that runs only that child (the whole process: Python, onnxruntime, every mapped
page of the weights it touched). A second child then checks the written model: ``onnx.checker``
on the path (external data included) and onnxruntime's outputs against the fp32 model on 4 samples
(cosine). Output files are deleted after each run; the model is kept with ``--keep``.

Goal (issue 11): every pass succeeds on a > 2 GB model with a valid output and peak RSS ≤ 3× the
model's size.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = 4096
LAYER_BYTES = HIDDEN * HIDDEN * 4
SAMPLES = 16

PASS_FLAGS = {
    "simplify": ["--target", "cpu"],
    "fp16": ["--fp16", "--target", "cuda"],
    "int8": ["--int8", "--target", "cpu", "--calib-data", "{calib}"],
}


def generate(folder: Path, size_gb: float) -> tuple[Path, Path]:
    """Write ``model.onnx`` + ``model.onnx.data`` and ``calib.npz`` into ``folder``."""
    import onnx_ir as ir

    layers = max(1, math.ceil(size_gb * 1024**3 / LAYER_BYTES))
    model_path, calib_path = folder / "model.onnx", folder / "calib.npz"
    folder.mkdir(parents=True, exist_ok=True)
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(["N", HIDDEN]))
    nodes, current, initializers = [], x, []
    for i in range(layers):
        def weight(seed=i):
            rng = np.random.default_rng(seed)
            return ir.tensor(rng.standard_normal((HIDDEN, HIDDEN), dtype=np.float32) * (1.4 / HIDDEN**0.5))

        w = ir.Value(name=f"w{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([HIDDEN, HIDDEN]),
                     const_value=ir.LazyTensor(weight, ir.DataType.FLOAT, ir.Shape([HIDDEN, HIDDEN]), name=f"w{i}"))
        b = ir.Value(name=f"b{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([HIDDEN]),
                     const_value=ir.tensor(np.full(HIDDEN, 0.01, np.float32), name=f"b{i}"))
        initializers += [w, b]
        mm = ir.node("MatMul", [current, w], name=f"matmul{i}")
        add = ir.node("Add", [mm.outputs[0], b], name=f"add{i}")
        act = ir.node("Relu", [add.outputs[0]], name=f"relu{i}")
        nodes += [mm, add, act]
        for node in (mm, add, act):
            node.outputs[0].type = ir.TensorType(ir.DataType.FLOAT)
            node.outputs[0].shape = ir.Shape(["N", HIDDEN])
        current = act.outputs[0]
    current.name = "y"
    graph = ir.Graph([x], [current], nodes=nodes, initializers=initializers, opset_imports={"": 17}, name="chain")
    ir.save(ir.Model(graph, ir_version=8, producer_name="bench_large"), model_path,
            external_data=model_path.name + ".data", alignment=65536)
    rng = np.random.default_rng(123)
    np.savez(calib_path, x=rng.standard_normal((SAMPLES, HIDDEN), dtype=np.float32))
    return model_path, calib_path


LAUNCHER = ("import resource, subprocess, sys, time\n"
            "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "import json; print(json.dumps({'rc': r.returncode, 'seconds': time.perf_counter() - t,\n"
            "  'peak_rss': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,\n"
            "  'stderr': r.stderr[-2000:]}))\n")

CHECKER = """
import json, sys
import numpy as np, onnx, onnxruntime as ort
reference, candidate, calib = sys.argv[1:4]
onnx.checker.check_model(candidate)
options = ort.SessionOptions(); options.log_severity_level = 3
options.add_session_config_entry("session.disable_prepacking", "1")
x = np.load(calib)["x"][:4]
def run(path):
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16) if session.get_inputs()[0].type == "tensor(float16)" else x
    return np.asarray(session.run(None, {session.get_inputs()[0].name: feed})[0], dtype=np.float64)
a = run(reference).ravel(); b = run(candidate).ravel()
print(json.dumps({"cosine": float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))}))
"""


def run_pass(name: str, model: Path, calib: Path, work: Path) -> dict:
    output = work / f"out-{name}.onnx"
    flags = [f.format(calib=calib) for f in PASS_FLAGS[name]]
    command = [sys.executable, "-m", "graphopt", "optimize", str(model), "-o", str(output), *flags,
               "--cache-dir", str(work / "cache"), "--report", str(work / f"report-{name}.json")]
    measured = json.loads(subprocess.run([sys.executable, "-c", LAUNCHER, *command], capture_output=True,
                                         text=True, check=True, cwd=ROOT).stdout)
    row = {"pass": name, "rc": measured["rc"], "seconds": measured["seconds"], "peak_rss": measured["peak_rss"]}
    if measured["rc"] != 0:
        row["error"] = measured["stderr"].strip().splitlines()[-1] if measured["stderr"].strip() else "?"
    if output.exists():
        check = subprocess.run([sys.executable, "-c", CHECKER, str(model), str(output), str(calib)],
                               capture_output=True, text=True)
        row["valid"] = check.returncode == 0
        row["cosine"] = json.loads(check.stdout)["cosine"] if check.returncode == 0 else None
        if check.returncode:
            row["check_error"] = (check.stderr.strip().splitlines() or ["?"])[-1]
        row["written_bytes"] = sum(p.stat().st_size for p in work.glob(f"{output.name}*"))
    for leftover in work.glob("out-*"):
        leftover.unlink()
    shutil.rmtree(work / "cache", ignore_errors=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-gb", type=float, default=2.3)
    parser.add_argument("--passes", default="simplify,fp16,int8")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/graphopt-large"))
    parser.add_argument("--keep", action="store_true", help="keep the generated model")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    folder = args.dir / f"chain-{args.size_gb:g}gb"
    model, calib = folder / "model.onnx", folder / "calib.npz"
    if not (model.exists() and calib.exists()):
        started = time.perf_counter()
        generate(folder, args.size_gb)
        print(f"generated {model} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    size = sum(p.stat().st_size for p in folder.glob("model.onnx*"))
    if args.generate_only:
        print(f"{model}: {size / 1024**3:.2f} GiB")
        return
    rows = []
    try:
        for name in args.passes.split(","):
            row = run_pass(name, model, calib, folder)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"\nmodel: {size / 1024**3:.2f} GiB ({size:,} bytes), MatMul chain {HIDDEN}², external data\n")
    print("| pass | exit | peak RSS | RSS / model | seconds | output valid | cosine vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        valid = {True: "yes", False: f"no ({row.get('check_error', '')})", None: "–"}[row.get("valid")]
        cosine = f"{row['cosine']:.6f}" if row.get("cosine") is not None else "–"
        exit_ = str(row["rc"]) + (f" ({row['error'][:90]})" if row.get("error") else "")
        print(f"| {row['pass']} | {exit_} | {row['peak_rss'] / 1024**3:.2f} GiB | {row['peak_rss'] / size:.2f}× | "
              f"{row['seconds']:.0f} | {valid} | {cosine} |")


if __name__ == "__main__":
    main()
