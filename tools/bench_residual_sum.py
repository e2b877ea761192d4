"""Residual sum + LayerNorm on onnxruntime's CPU provider: the fused SkipLayerNormalization against
``Add`` + ``LayerNormalization`` kept apart by writing the sum as ``Sum`` (graphopt.passes.residual_sum).

Usage::

    python tools/bench_residual_sum.py [--shapes 1x16x384,4x64x384,1x128x768,8x128x768] [--threads 1,2]
                                       [--runs 300] [--json out.json]

For each ``batch×sequence×hidden`` the three models take the same inputs and run interleaved in one
process (graphopt.profiling.timing), medians of ``--runs`` runs:

* ``add`` — ``Add(x, r) → LayerNormalization``, with shapes known: onnxruntime fuses it into
  SkipLayerNormalization (checked: the optimized graph is printed when it does not);
* ``sum`` — ``Sum(x, r) → LayerNormalization``: what ``simplify`` writes on the cpu target;
* ``layernorm`` — LayerNormalization alone (the floor).

The ratio column is ``add / sum``: above 1 the rewrite pays. Should a future onnxruntime make its
SkipLayerNormalization faster than the pair, this table says so and ``SimplifyOptions.residual_sum``
should default to off.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from graphopt.profiling.stats import median_ms  # noqa: E402 (after the path insert)
from graphopt.profiling.timing import interleaved_timings  # noqa: E402


def _model(op: str | None, hidden: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node(op, ["x", "r"], ["s"])] if op else []
    nodes.append(helper.make_node("LayerNormalization", ["s" if op else "x", "g", "b"], ["y"], axis=-1, epsilon=1e-12))
    shape = ["N", "S", hidden]
    graph = helper.make_graph(
        nodes, "residual_layernorm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape),
         helper.make_tensor_value_info("r", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(rng.uniform(0.5, 1.5, hidden).astype(np.float32), "g"),
         numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _session(model, threads: int, optimized: Path | None = None):
    import onnxruntime as ort

    ort.set_default_logger_severity(3)  # not the note that an optimized model file is machine-specific
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if optimized is not None:
        options.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def measure(shape: tuple[int, int, int], threads: int, runs: int) -> dict:
    import onnx

    batch, sequence, hidden = shape
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal(shape).astype(np.float32), "r": rng.standard_normal(shape).astype(np.float32)}
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "add.onnx"
        sessions = {"add": _session(_model("Add", hidden), threads, optimized),
                    "sum": _session(_model("Sum", hidden), threads),
                    "layernorm": _session(_model(None, hidden), threads)}
        fused = "SkipLayerNormalization" in {n.op_type for n in onnx.load(str(optimized)).graph.node}
    runners = {name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}
    timings = interleaved_timings(runners, warmup=20, iterations=runs)
    ms = {name: median_ms(timings.seconds[name]) for name in sessions}
    return {"shape": f"{batch}x{sequence}x{hidden}", "threads": threads, "add_fused_by_ort": fused,
            **{f"{name}_us": round(value * 1000, 1) for name, value in ms.items()},
            "add_over_sum": round(ms["add"] / ms["sum"], 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="1x16x384,4x64x384,1x128x768,8x128x768")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    print(f"{'shape':>12} {'thr':>3} {'Add→SkipLN µs':>14} {'Sum+LN µs':>10} {'LN µs':>8} {'ratio':>6}")
    for threads in (int(t) for t in args.threads.split(",")):
        for text in args.shapes.split(","):
            shape = tuple(int(v) for v in text.split("x"))
            row = measure(shape, threads, args.runs)  # type: ignore[arg-type]
            rows.append(row)
            note = "" if row["add_fused_by_ort"] else "  (onnxruntime did not fuse the Add)"
            print(f"{row['shape']:>12} {threads:>3} {row['add_us']:>14.1f} {row['sum_us']:>10.1f} "
                  f"{row['layernorm_us']:>8.1f} {row['add_over_sum']:>5.2f}×{note}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
