"""Profiler benchmarks on this CPU: is ``graphopt profile`` honest, and how do fp32 / int8 / fp16 compare?

    python tools/bench_profile.py [--models digits-cnn,resnet18-224,transformer-encoder,minilm-l6]
                                  [--iters 30] [--repeats 3] [--threads 2] [--out bench_results/]

1. **Honesty** (on the first model with an int8 variant worth timing, ResNet-18 by default): the
   profiler's p50 ratio int8/fp32 against an *independent* interleaved loop written here (onnxruntime
   sessions made directly, A B A B … with ``time.perf_counter``, median by sorting) — same threads, no
   spin-waiting. Both procedures alternate ``--repeats`` times; the verdict compares the medians of
   their ratios (goal: within 5 %).
2. **1 vs 30 iterations**: ``--repeats``×5 profiles of 1 iteration each against one profile of 30; the
   1-iteration p50s should fall inside the 30-iteration run's p10–p90 band (its noise).
3. **fp32 vs int8 vs fp16** of each reference model, profiled interleaved at batch 1 (int8: graphopt
   ``--int8`` for target cpu; fp16: graphopt ``--fp16`` for target cuda — a GPU format that onnxruntime's
   CPU provider mostly runs through casts, shown for completeness).

Writes ``<out>/bench_profile.md`` and ``.json``. Numbers from a shared machine: read the ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from tools.bench_lib import markdown_table  # noqa: E402

DEFAULT_MODELS = "digits-cnn,resnet18-224,transformer-encoder,minilm-l6"


def _variants(name: str, workdir: Path) -> tuple[dict[str, Path], Path]:
    import graphopt
    from graphopt.passes.fp16 import Fp16Pass
    from graphopt.passes.int8 import Int8Pass
    from graphopt.passes.simplify import SimplifyPass
    from models.registry import build_model

    model, calib, evaluation = build_model(name)
    out = {"fp32": Path(model)}
    for variant, passes, target in (("int8", [SimplifyPass(), Int8Pass()], "cpu"),
                                    ("fp16", [SimplifyPass(), Fp16Pass()], "cuda")):
        path = workdir / f"{name}.{variant}.onnx"
        graphopt.optimize(model, path, passes=passes, calib_data=calib, target=target, cache=False, latency_budget=0)
        out[variant] = path
    return out, Path(evaluation)


def _independent_ratio(paths: list[Path], feeds: dict[str, np.ndarray], threads: int, rounds: int) -> float:
    """p50(B) / p50(A) by a loop that shares no code with graphopt's profiler."""
    import onnxruntime as ort

    sessions = []
    for path in paths:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        sessions.append((session, {i.name: feeds[i.name] for i in session.get_inputs()}))
    for session, f in sessions:
        for _ in range(10):
            session.run(None, f)
    times: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for (session, f), spent in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, f)
            spent.append(time.perf_counter() - start)
    a, b = (sorted(t)[len(t) // 2] if len(t) % 2 else sum(sorted(t)[len(t) // 2 - 1:len(t) // 2 + 1]) / 2 for t in times)
    return b / a


def honesty(paths: list[Path], feeds: dict[str, np.ndarray], threads: int, iters: int, repeats: int) -> dict:
    from graphopt.data import DataSet
    from graphopt.profiling.profiler import ProfileOptions, profile_engines

    data = DataSet({k: v for k, v in feeds.items()})
    ours, theirs = [], []
    for _ in range(repeats):
        result = profile_engines(paths, ProfileOptions(iterations=iters, threads=threads), data=data)
        ours.append(result.engines[1].measurements[0].ratio_p50)
        theirs.append(_independent_ratio(paths, feeds, threads, iters))
    profiler, independent = statistics.median(ours), statistics.median(theirs)
    return {"profiler_ratios": ours, "independent_ratios": theirs, "profiler": profiler, "independent": independent,
            "difference": profiler / independent - 1, "within_5_percent": abs(profiler / independent - 1) <= 0.05}


def iterations_check(path: Path, feeds: dict[str, np.ndarray], threads: int, repeats: int) -> dict:
    from graphopt.data import DataSet
    from graphopt.profiling.profiler import ProfileOptions, profile_engines

    data = DataSet(dict(feeds))
    singles = [profile_engines([path], ProfileOptions(iterations=1, threads=threads), data=data)
               .engines[0].measurements[0].stats.p50_ms for _ in range(5 * repeats)]
    thirty = profile_engines([path], ProfileOptions(iterations=30, threads=threads), data=data).engines[0].measurements[0]
    low, high = np.percentile(thirty.samples_ms, [10, 90])
    single = statistics.median(singles)
    return {"p50_1_iteration_runs_ms": singles, "p50_1_iteration_median_ms": single, "p50_30_iterations_ms": thirty.stats.p50_ms,
            "band_p10_p90_ms": [float(low), float(high)], "difference": single / thirty.stats.p50_ms - 1,
            "inside_noise_band": bool(low <= single <= high)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--honesty-model", default="resnet18-224")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args()
    from graphopt.data import load_data
    from graphopt.profiling.profiler import ProfileOptions, profile_engines

    args.out.mkdir(parents=True, exist_ok=True)
    report: dict = {"threads": args.threads, "iters": args.iters, "repeats": args.repeats, "models": {}}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        names = args.models.split(",")
        if args.honesty_model not in names:
            names.insert(0, args.honesty_model)
        for name in names:
            print(f"{name}: making int8 / fp16 variants", file=sys.stderr, flush=True)
            variants, evaluation = _variants(name, workdir)
            data = load_data(evaluation).take(1)
            feeds = dict(data.inputs)
            if name == args.honesty_model:
                print(f"{name}: honesty ({args.repeats} repeats)", file=sys.stderr, flush=True)
                report["honesty"] = {"model": name, **honesty([variants["fp32"], variants["int8"]], feeds, args.threads,
                                                              args.iters, args.repeats)}
                report["iterations"] = {"model": name, **iterations_check(variants["fp32"], feeds, args.threads,
                                                                          args.repeats)}
            if name not in args.models.split(","):
                continue
            print(f"{name}: fp32 / int8 / fp16 interleaved", file=sys.stderr, flush=True)
            result = profile_engines(list(variants.values()), ProfileOptions(iterations=args.iters, threads=args.threads),
                                     data=data)
            report["models"][name] = result.to_dict()
            for variant, engine in zip(variants, result.engines):
                m = engine.measurements[0]
                rows.append([name, variant, f"{m.stats.p50_ms:.3f}", f"{m.stats.p90_ms:.3f}", f"{m.ratio_p50:.3f}",
                             f"{variants[variant].stat().st_size / 2**20:.1f}"])
    h, it = report["honesty"], report["iterations"]
    text = (f"# graphopt profile benchmarks ({args.threads} threads, {args.iters} iterations, batch 1)\n\n"
            f"## Honesty: p50 ratio int8/fp32 of {h['model']}\n\n"
            + markdown_table(["procedure", "ratio (median of repeats)", "repeats"],
                             [["graphopt profile", f"{h['profiler']:.4f}", ", ".join(f"{r:.4f}" for r in h['profiler_ratios'])],
                              ["independent loop", f"{h['independent']:.4f}", ", ".join(f"{r:.4f}" for r in h['independent_ratios'])]])
            + f"\n\ndifference {100 * h['difference']:+.2f} % → {'within' if h['within_5_percent'] else 'NOT within'} 5 %\n\n"
            f"## 1 vs 30 iterations ({it['model']} fp32)\n\n"
            f"p50 of 1-iteration profiles (median of {len(it['p50_1_iteration_runs_ms'])}): {it['p50_1_iteration_median_ms']:.3f} ms; "
            f"30 iterations: {it['p50_30_iterations_ms']:.3f} ms (p10–p90 {it['band_p10_p90_ms'][0]:.3f}–{it['band_p10_p90_ms'][1]:.3f}); "
            f"difference {100 * it['difference']:+.2f} %, {'inside' if it['inside_noise_band'] else 'OUTSIDE'} the noise band\n\n"
            "## fp32 vs int8 vs fp16 (interleaved, CPU provider)\n\n"
            + markdown_table(["model", "variant", "p50 ms", "p90 ms", "× fp32", "file MB"], rows) + "\n")
    print(text)
    (args.out / "bench_profile.md").write_text(text)
    (args.out / "bench_profile.json").write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
