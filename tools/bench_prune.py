"""Pruning benchmarks (issue 8): the tables behind the README's pruning section.

    python tools/bench_prune.py resnet      [--runs 30]   # ResNet-18-style 224²: channel 0.3 / 0.5, + int8
    python tools/bench_prune.py generality  [--models …]  # channel pruning 0.3 over the architecture zoo
    python tools/bench_prune.py digits                    # digits CNN accuracy per mode and level
    python tools/bench_prune.py sparse      [--models …]  # unstructured 0.5 / 0.8 and 2:4: sizes, accuracy, latency
    python tools/bench_prune.py all

Every variant is built with graphopt's own pipeline (``simplify, prune[, int8]``, target cpu) through the
variants of ``tools/bench.py``, and measured with its machinery: onnxruntime CPU latency at batch 1, all
variants of a model interleaved round-robin in one process (ratios to fp32 of the same rounds, sessions
without spin-waiting), quality against the fp32 model on the model's eval data. On top of that this script
records parameters and MACs (``graphopt.inspection``, batch 1) before → after, the file size and its gzip
size, whether the result passes the onnx checker (full) and loads in onnxruntime, and for channel pruning
the groups pruned and the dims left alone with their reasons. Results go to ``<out>/prune_<table>.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402

from tools import bench  # noqa: E402
from tools.bench_lib import format_number, markdown_table  # noqa: E402

TRANSFORMERS = ("transformer-encoder", "minilm-l6")
REAL_EXPORTS = ("ppocr-det", "ppocr-rec")
SPARSE_VARIANTS = ("graphopt-unstructured-0.5", "graphopt-unstructured-0.5-sparse", "graphopt-unstructured-0.8",
                   "graphopt-unstructured-0.8-sparse", "graphopt-2:4")
DIGITS_LEVELS = {
    "channel": [0.1, 0.2, 0.3, 0.5, 0.7],
    "unstructured": [0.5, 0.8, 0.9],
    "unstructured-global": [0.5, 0.8, 0.9],
    "2:4": [0.5],
}


# ------------------------------------------------------------------------------------------ facts
def file_facts(path: Path, mac_shapes: dict) -> dict:
    """Parameters, MACs (batch 1), file and gzip bytes, validity of one model file."""
    from graphopt.inspection import macs_by_node
    from graphopt.model_io import load_model
    from graphopt.passes.prune.prune_pass import parameter_count

    data = path.read_bytes()
    model = load_model(path)
    macs = macs_by_node(model, mac_shapes)
    facts = {"params": parameter_count(model), "macs": int(sum(v for v in macs.values() if v)),
             "macs_unknown": sum(1 for v in macs.values() if v is None),
             "file_bytes": len(data), "gzip_bytes": len(gzip.compress(data, compresslevel=9))}
    try:
        onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
        facts["valid"] = True
    except Exception as exc:
        facts["valid"] = False
        facts["invalid_reason"] = str(exc).splitlines()[0][:200]
    return facts


def measure(model_name: str, variants: list[str], runs: int, warmup: int, threads: int) -> dict:
    """``tools/bench.py``'s measurement of ``variants`` plus :func:`file_facts` for every model file."""
    from graphopt.model_io import load_model
    from graphopt.passes.prune.prune_pass import mac_shapes

    case = bench.load_case(model_name)
    shapes = mac_shapes(load_model(case.model))
    with tempfile.TemporaryDirectory(prefix=f"prune-{model_name}-") as tmp:
        section = bench.bench_model(case, variants, Path(tmp), runs, warmup, threads)
        for row in section["rows"]:
            path = case.model if row["variant"] == "fp32" else Path(tmp) / f"{row['variant']}.onnx"
            if row["status"] == "ok" and path.exists():
                row["facts"] = file_facts(path, shapes)
    base = next(r for r in section["rows"] if r["variant"] == "fp32")["facts"]
    for row in section["rows"]:
        facts = row.get("facts")
        if facts:
            for key in ("params", "macs", "file_bytes", "gzip_bytes"):
                facts[f"{key}_ratio"] = facts[key] / base[key] if base[key] else None
    return section


def prune_stats(row: dict) -> dict:
    for entry in row.get("details", {}).get("passes", []):
        if entry["pass"] == "prune":
            return entry["stats"]
    return {}


def quality_text(row: dict) -> str:
    quality = row.get("quality") or {}
    value = quality.get("value")
    if value is None:
        return "–"
    metric = quality.get("metric", "")
    if metric in ("accuracy", "argmax-agreement"):
        return f"{'top-1 agreement' if metric == 'argmax-agreement' else metric} {100 * value:.2f} %"
    return f"{metric} {value:.4f}"


# ------------------------------------------------------------------------------------------ tables
def table_resnet(args) -> tuple[dict, str]:
    variants = ["fp32", "graphopt-prune-0.3", "graphopt-prune-0.5", "graphopt-int8", "graphopt-prune-0.5+int8"]
    section = measure("resnet18-224", variants, args.runs, args.warmup, args.threads)
    rows = []
    for row in section["rows"]:
        facts = row.get("facts", {})
        rows.append([row["variant"], format_number(facts.get("params_ratio")), format_number(facts.get("macs_ratio")),
                     format_number(row.get("size_ratio")), format_number(row.get("latency_ms")),
                     format_number(row.get("latency_ratio")), quality_text(row),
                     "yes" if facts.get("valid") else facts.get("invalid_reason", row.get("reason", "–"))])
    text = markdown_table(["variant", "params ×", "MACs ×", "size ×", "latency ms", "latency ×", "quality", "valid"],
                          rows)
    return {"resnet18-224": section}, text


def table_generality(args) -> tuple[dict, str]:
    from models.registry import ZOO_MODELS

    names = args.models.split(",") if args.models else [*ZOO_MODELS, *TRANSFORMERS, *REAL_EXPORTS]
    variant = f"graphopt-prune-{args.amount}"
    if variant not in bench.VARIANTS:
        bench._prune_variant(f"prune-{args.amount}", {"amount": args.amount})
    result, rows = {}, []
    for name in names:
        bench._progress(f"{name}:")
        try:
            section = measure(name, ["fp32", variant], args.runs, args.warmup, args.threads)
        except bench.Skip as exc:
            result[name] = {"status": "skipped", "reason": str(exc)}
            rows.append([name, "skipped", "", "", "", "", "", "", str(exc)])
            continue
        result[name] = section
        row = next(r for r in section["rows"] if r["variant"] == variant)
        facts, stats = row.get("facts", {}), prune_stats(row)
        left = [g for g in stats.get("left_alone", []) if "first layer" not in g["reason"] and "last layer" not in g["reason"]]
        left_text = "; ".join(f"{g['channels']} ch: {g['reason']}" for g in left[:2]) + (f" (+{len(left) - 2})" if len(left) > 2 else "")
        ok = row["status"] == "ok" and facts.get("valid")
        rows.append([name, "yes" if ok else f"no: {row.get('reason', facts.get('invalid_reason', ''))}",
                     format_number(facts.get("macs_ratio")), format_number(facts.get("params_ratio")),
                     format_number(row.get("latency_ratio")), quality_text(row),
                     str(stats.get("groups_pruned", "–")), stats.get("exact_check", "–"), left_text or "–"])
    text = markdown_table(["model", "valid + runs", "MACs ×", "params ×", "latency ×", "quality vs fp32",
                           "groups", "exact check", "left alone (besides first/last layers)"], rows)
    return result, text


def table_digits(args) -> tuple[dict, str]:
    for mode, levels in DIGITS_LEVELS.items():
        for level in levels:
            options = {"amount": level}
            if mode == "unstructured-global":
                options.update(mode="unstructured", scope="global")
            elif mode != "channel":
                options["mode"] = mode
            name = f"prune-digits-{mode}-{level}"
            if f"graphopt-{name}" not in bench.VARIANTS:
                bench._prune_variant(name, options)
    variants = ["fp32", *[f"graphopt-prune-digits-{m}-{lv}" for m, levels in DIGITS_LEVELS.items() for lv in levels]]
    section = measure("digits-cnn", variants, args.runs, args.warmup, args.threads)
    rows = []
    for row in section["rows"]:
        facts = row.get("facts", {})
        label = "fp32" if row["variant"] == "fp32" else row["variant"].removeprefix("graphopt-prune-digits-")
        stats = prune_stats(row)
        rows.append([label, quality_text(row), format_number(facts.get("params_ratio")),
                     format_number(facts.get("macs_ratio")), str(stats.get("sparsity", "–"))])
    text = markdown_table(["mode-level", "eval accuracy (300 digits)", "params ×", "MACs ×", "weight sparsity"], rows)
    return {"digits-cnn": section}, text


def table_sparse(args) -> tuple[dict, str]:
    names = args.models.split(",") if args.models else ["resnet18-224", "digits-cnn", "transformer-encoder"]
    result, rows = {}, []
    for name in names:
        bench._progress(f"{name}:")
        section = measure(name, ["fp32", *SPARSE_VARIANTS], args.runs, args.warmup, args.threads)
        result[name] = section
        for row in section["rows"]:
            facts = row.get("facts", {})
            stats = prune_stats(row)
            rows.append([name, row["variant"], format_number(facts.get("file_bytes", 0) / 1e6),
                         format_number(facts.get("file_bytes_ratio")), format_number(facts.get("gzip_bytes", 0) / 1e6),
                         format_number(facts.get("gzip_bytes_ratio")), str(stats.get("sparsity", "–")),
                         quality_text(row), format_number(row.get("latency_ratio"))])
    text = markdown_table(["model", "variant", "file MB", "file ×", "gzip MB", "gzip ×", "weight sparsity",
                           "quality", "latency ×"], rows)
    return result, text


TABLES = {"resnet": table_resnet, "generality": table_generality, "digits": table_digits, "sparse": table_sparse}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/bench_prune.py", description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=[*TABLES, "all"])
    parser.add_argument("--models", help="comma-separated registry names (generality, sparse)")
    parser.add_argument("--amount", type=float, default=0.3, help="channel amount for the generality table")
    parser.add_argument("--runs", type=int, default=30, help="timed interleaved runs per variant (median)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("bench_results"))
    args = parser.parse_args(argv)
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in TABLES if args.table == "all" else [args.table]:
        data, text = TABLES[name](args)
        meta = {"table": name, "runs": args.runs, "warmup": args.warmup, "threads": args.threads,
                "versions": bench.library_versions()}
        bench._write_atomic(args.out / f"prune_{name}.json",
                            json.dumps(bench._json_safe({"meta": meta, "models": data}), indent=1) + "\n")
        bench._write_atomic(args.out / f"prune_{name}.md", f"## pruning: {name}\n\n{text}\n")
        print(f"## pruning: {name}\n\n{text}\n", flush=True)
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
