"""Distillation benchmark: ``python tools/bench_distill.py [--seeds 3] [--epochs 30] [--no-minilm | --no-digits] [--out bench_results/]``.

**digits CNN** (``models/digits_cnn.onnx``, simplified: BatchNorm folded; real labels; trained on the
1,297-sample training split ``models/digits_cnn_train.npz``, scored on the 300 held-out eval samples).
Students at widths 0.5 and 0.25, all from the same channel-pruned initialization
(:func:`graphopt.passes.prune.channel.prune_channels`, the auto-student of ``--student-width``):

* **pruned** — no training;
* **hard labels** — fine-tuned on the labels only (the distill pass with ``alpha = 0``: cross-entropy,
  the same optimizer, schedule, epochs and best-epoch selection as the distilled student);
* **distilled** — this pass (``kd``, ``T = 3``, ``alpha = 0.7``);
* **distilled + int8** — width 0.5 distilled, then ``--int8`` in the same pipeline.

Per row: weights (float initializer elements), MACs at batch 1, onnxruntime CPU latency as a ratio to
the teacher at batch 1 and at batch 300 (interleaved in one run: ``tools/bench_lib.interleaved_latency``,
sessions without spin-waiting, ``--threads`` intra-op threads, median of ``--runs`` rounds), eval accuracy
(mean over ``--seeds`` seeds with min–max, trained rows) and training seconds.

**MiniLM-L6** (``models/_build/minilm_l6.onnx``, real weights; ``python -m models --all`` builds it):
the student is MiniLM with every FFN (intermediate) layer pruned to half width, attention kept
(``prune_channels`` with the attention MatMuls skipped), given to the pass as ``--student``; trained with
the cosine loss (``auto``: both outputs are embeddings) on unlabelled sentences: the 136 calibration
sentences plus the 176 template sentences of :mod:`models.minilm` that neither data file uses (312),
scored on the 64 eval sentences. Reports the cosine to the teacher of both outputs before and after
training, weights, latency ratio (batch 1, 64 tokens) and training time.

Training time is wall-clock on whatever machine runs this (the shared 2-core VM when the numbers in the
README were taken: other jobs ran at the same time, so treat seconds as an upper bound; latency ratios
come from interleaved runs and are robust to that).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from graphopt import optimize  # noqa: E402
from graphopt.data import DataSet, load_data  # noqa: E402
from graphopt.engines.ort import build as build_engine  # noqa: E402
from graphopt.inspection import inspect_model  # noqa: E402
from graphopt.model_io import load_model, normalize_model, save_model  # noqa: E402
from graphopt.passes.distill import DistillOptions, DistillPass  # noqa: E402
from graphopt.passes.int8 import Int8Pass  # noqa: E402
from graphopt.passes.simplify import SimplifyPass  # noqa: E402
from graphopt.verify import compare_outputs, mean_cosine  # noqa: E402
from tools.bench_lib import format_number, interleaved_latency, markdown_table, median_ms  # noqa: E402

MODELS = ROOT / "models"
WIDTHS = (0.5, 0.25)
NO_BUDGET = 100.0
"""The benchmark measures every student, so the substitution budget is lifted (the table shows the drop)."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _distill(teacher: Path, out: Path, options: DistillOptions, train, evaluation, *, int8_calib=None) -> dict:
    passes = [DistillPass(options)] + ([Int8Pass()] if int8_calib is not None else [])
    result = optimize(teacher, out, passes=passes, train_data=train, eval_data=evaluation, calib_data=int8_calib,
                      max_accuracy_drop=NO_BUDGET, cache=False)
    row = next(r for r in result.report.rows if r.name == "distill")
    if not row.stats.get("substituted"):
        raise RuntimeError(f"student not substituted for {out.name}: {row.notes}")
    return row.stats


def _accuracy(path: Path, evaluation: DataSet) -> float:
    outputs = build_engine(onnx.load(str(path))).run(evaluation.inputs)
    return float(np.mean(outputs["logits"].argmax(axis=1) == evaluation.labels))


def _facts(path: Path, shape: dict[str, tuple[int, ...]]) -> dict:
    info = inspect_model(path, shape)
    return {"weights": info["parameters"]["count"], "macs": info["macs"]["total"]}


def _latency(paths: dict[str, Path], feeds: dict[str, np.ndarray], runs: int, threads: int) -> dict[str, float]:
    sessions = {name: build_engine(onnx.load(str(p)), threads=threads, spinning=False) for name, p in paths.items()}
    runners = {name: (lambda e=engine: e.run(feeds)) for name, engine in sessions.items()}
    return {name: median_ms(times) for name, times in interleaved_latency(runners, runs=runs).items()}


def bench_digits(workdir: Path, seeds: int, epochs: int, runs: int, threads: int) -> dict:
    from graphopt.passes.prune.channel import prune_channels

    train = load_data(MODELS / "digits_cnn_train.npz")
    evaluation = load_data(MODELS / "digits_cnn_eval.npz")
    calib = MODELS / "digits_cnn_calib.npz"
    teacher = workdir / "teacher.onnx"
    optimize(MODELS / "digits_cnn.onnx", teacher, passes=[SimplifyPass()], cache=False)
    rows: dict[str, dict] = {"teacher": {"width": 1.0, "path": teacher, "acc": [_accuracy(teacher, evaluation)]}}
    for width in WIDTHS:
        _progress(f"digits: width {width}")
        pruned = workdir / f"pruned_{width}.onnx"
        outcome = prune_channels(load_model(teacher), 1.0 - width)
        simplified = optimize(outcome.model, pruned, passes=[SimplifyPass()], cache=False)
        assert simplified.output_path is not None
        rows[f"pruned {width}"] = {"width": width, "path": pruned, "acc": [_accuracy(pruned, evaluation)]}
        for label, alpha in (("hard labels", 0.0), ("distilled", 0.7)):
            accs, seconds, epochs_run = [], [], []
            for seed in range(seeds):
                out = workdir / f"{label.replace(' ', '_')}_{width}_s{seed}.onnx"
                stats = _distill(teacher, out, DistillOptions(student_width=width, alpha=alpha, epochs=epochs,
                                                              seed=seed), train, evaluation)
                accs.append(_accuracy(out, evaluation))
                seconds.append(stats["train_seconds"])
                epochs_run.append(stats["epochs_run"])
                _progress(f"  {label} seed {seed}: acc {100 * accs[-1]:.2f}% in {seconds[-1]:.0f}s")
            rows[f"{label} {width}"] = {"width": width, "path": workdir / f"{label.replace(' ', '_')}_{width}_s0.onnx",
                                        "acc": accs, "train_s": seconds, "epochs": epochs_run}
    _progress("digits: distilled 0.5 + int8")
    both = workdir / "distilled_int8.onnx"
    stats = _distill(teacher, both, DistillOptions(student_width=0.5, epochs=epochs, seed=0), train, evaluation,
                     int8_calib=calib)
    rows["distilled 0.5 + int8"] = {"width": 0.5, "path": both, "acc": [_accuracy(both, evaluation)],
                                    "train_s": [stats["train_seconds"]]}
    paths = {name: row["path"] for name, row in rows.items()}
    one = {"input": evaluation.inputs["input"][:1]}
    _progress("digits: latency")
    lat1 = _latency(paths, one, runs, threads)
    latn = _latency(paths, evaluation.inputs, runs, threads)
    for name, row in rows.items():
        row.update(_facts(row["path"], {"input": (1, 1, 8, 8)}))
        row["latency_ms_b1"], row["latency_ms_b300"] = lat1[name], latn[name]
        row["path"] = row["path"].name
    return rows


def minilm_train_texts() -> list[str]:
    """The template sentences of :mod:`models.minilm` that neither its calib nor its eval file uses."""
    import itertools

    from models import minilm

    used = set(minilm.sentences())
    templated = [f"{s} {a} {t}" for s, a, t in itertools.product(minilm._SUBJECTS, minilm._ACTIONS, minilm._TOPICS)]
    return [t for t in templated if t not in used]


def bench_minilm(workdir: Path, epochs: int, runs: int, threads: int) -> dict:
    from graphopt.passes.prune.channel import prune_channels
    from models import minilm

    teacher_path = MODELS / "_build" / "minilm_l6.onnx"
    if not teacher_path.exists():
        return {"status": "skipped", "reason": f"{teacher_path} missing: python -m models --all"}
    calib = load_data(MODELS / "_build" / "minilm_l6_calib.npz")
    evaluation = load_data(MODELS / "_build" / "minilm_l6_eval.npz")
    extra = minilm.tokenize(minilm_train_texts())
    train = DataSet({k: np.concatenate([calib.inputs[k], extra[k]]) for k in calib.inputs}, source="minilm train")
    _progress(f"minilm: {len(train)} training sentences, {len(evaluation)} eval")
    teacher = load_model(teacher_path)
    normalize_model(teacher)
    attention = [n.name for n in teacher.graph if n.op_type == "MatMul" and "/attention/" in n.name]
    started = time.perf_counter()
    outcome = prune_channels(teacher, 0.5, skip=attention)
    student = workdir / "minilm_ffn_half.onnx"
    save_model(outcome.model, student)
    prune_s = time.perf_counter() - started
    out = workdir / "minilm_distilled.onnx"
    stats = _distill(teacher_path, out, DistillOptions(student=str(student), epochs=epochs, batch_size=16),
                     train, evaluation)
    teacher_out = build_engine(onnx.load(str(teacher_path))).run_batches(evaluation.batches(16))
    rows = {}
    for name, path in (("teacher", teacher_path), ("pruned FFN 0.5", student), ("distilled FFN 0.5", out)):
        got = teacher_out if name == "teacher" else build_engine(onnx.load(str(path))).run_batches(evaluation.batches(16))
        cosines = {k: mean_cosine(teacher_out[k], got[k]) for k in teacher_out}
        rows[name] = {"path": path, "cosine": cosines,
                      "drop": compare_outputs(teacher_out, got).worst_drop}
    one = {k: v[:1] for k, v in evaluation.inputs.items()}
    lat = _latency({n: r["path"] for n, r in rows.items()}, one, runs, threads)
    for name, row in rows.items():
        info = inspect_model(row["path"], {k: (1, minilm.SEQ) for k in minilm.INPUT_NAMES})
        row.update({"weights": info["parameters"]["count"], "macs": info["macs"]["total"], "latency_ms_b1": lat[name]})
        row["path"] = Path(row["path"]).name
    rows["distilled FFN 0.5"].update({"train_s": stats["train_seconds"], "epochs": stats["epochs_run"],
                                      "best_epoch": stats["best_epoch"], "losses": stats["losses"],
                                      "lr": stats["lr"], "prune_s": round(prune_s, 1)})
    return rows


def _digits_table(digits: dict) -> tuple[list[str], list[list[str]]]:
    base = digits["teacher"]
    header = ["student", "weights", "weights ×", "MACs", "latency × b1", "latency × b300", "accuracy %",
              "min–max %", "Δ pts", "train s"]
    table = []
    for name, row in digits.items():
        acc = [100 * a for a in row["acc"]]
        table.append([
            name, f"{row['weights']:,}", format_number(row["weights"] / base["weights"]), f"{row['macs']:,}",
            format_number(row["latency_ms_b1"] / base["latency_ms_b1"], 2),
            format_number(row["latency_ms_b300"] / base["latency_ms_b300"], 2),
            format_number(statistics.mean(acc), 2),
            f"{min(acc):.2f}–{max(acc):.2f}" if len(acc) > 1 else "–",
            format_number(statistics.mean(acc) - 100 * base["acc"][0], 2),
            format_number(statistics.mean(row["train_s"]), 0) if "train_s" in row else "–",
        ])
    return header, table


def render(result: dict) -> str:
    lines: list[str] = []
    digits = result.get("digits", {})
    if digits:
        lines += ["## digits CNN: students at width 0.5 and 0.25", ""]
        lines.append(markdown_table(*_digits_table(digits)))
    minilm_rows = result.get("minilm", {})
    if minilm_rows.get("status") == "skipped":
        lines += ["", f"MiniLM skipped: {minilm_rows['reason']}"]
    elif minilm_rows:
        lines += ["", "## MiniLM-L6: FFN width 0.5, cosine loss on unlabelled sentences", ""]
        base = minilm_rows["teacher"]
        header = ["model", "weights", "weights ×", "latency × b1", "cos sentence_embedding", "cos last_hidden_state",
                  "train s"]
        table = [[name, f"{row['weights']:,}", format_number(row["weights"] / base["weights"]),
                  format_number(row["latency_ms_b1"] / base["latency_ms_b1"], 2),
                  format_number(row["cosine"]["sentence_embedding"], 4),
                  format_number(row["cosine"]["last_hidden_state"], 4),
                  format_number(row.get("train_s"), 0) if "train_s" in row else "–"] for name, row in minilm_rows.items()]
        lines.append(markdown_table(header, table))
    meta = result["meta"]
    lines += ["", f"{meta['date']} · {meta['processor']} · {meta['cpus']} CPUs · seeds {meta['seeds']} · "
              f"epochs ≤ {meta['epochs']} · latency: {meta['runs']} interleaved rounds, {meta['threads']} thread(s) · "
              f"total {meta['total_s']} s"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/bench_distill.py", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per trained digits row")
    parser.add_argument("--epochs", type=int, default=30, help="most epochs (early stop on the eval metric)")
    parser.add_argument("--minilm-epochs", type=int, default=6)
    parser.add_argument("--runs", type=int, default=30, help="interleaved latency rounds")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads for latency")
    parser.add_argument("--no-minilm", action="store_true")
    parser.add_argument("--no-digits", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench_results")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    started = time.perf_counter()
    result: dict = {"meta": {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                             "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                             "seeds": args.seeds, "epochs": args.epochs, "runs": args.runs, "threads": args.threads}}
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        if not args.no_digits:
            result["digits"] = bench_digits(Path(tmp), args.seeds, args.epochs, args.runs, args.threads)
        if not args.no_minilm:
            result["minilm"] = bench_minilm(Path(tmp), args.minilm_epochs, args.runs, args.threads)
    result["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill.json").write_text(json.dumps(result, indent=2, default=str))
    text = render(result)
    (args.out / "distill.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
