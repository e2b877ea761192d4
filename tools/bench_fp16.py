"""Benchmark graphopt's fp16 / bf16 pass against onnxconverter-common, side by side in one run.

For every model: size ratio, max abs / relative error and the task metric vs fp32, Cast nodes
added and conversion time (median of ``--repeats``), for

* ``graphopt-fp16`` / ``graphopt-bf16``: :class:`graphopt.passes.fp16.Fp16Pass` for ``--target``
  (default ``cuda``), fed the model's calibration data;
* ``occ-fp16``: ``onnxconverter_common.float16.convert_float_to_float16(keep_io_types=True)``;
* ``occ-amp``: ``onnxconverter_common.auto_mixed_precision.auto_convert_mixed_precision`` on one
  eval batch, in a subprocess killed after ``--amp-timeout`` seconds.

Every converted model is evaluated on the CPU through the same fp32 emulation
(:func:`graphopt.passes.fp16.verify.emulation_copy`) so fp16 overflow shows as on a GPU (onnxruntime's
own CPU fallback hides it). Prints a markdown table and writes JSON.

    python tools/bench_fp16.py --models digits_cnn digits_mlp resnet18-224 minilm-l6 --json bench_fp16.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCAL = {"digits_cnn", "digits_mlp"}
F16, BF16 = onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16


def locate(name: str) -> tuple[Path, Path | None, Path | None]:
    if name in LOCAL:
        return ROOT / "models" / f"{name}.onnx", ROOT / "models" / f"{name}_calib.npz", ROOT / "models" / f"{name}_eval.npz"
    from models.registry import build_model

    return build_model(name)


def load_npz(path: Path | None, limit: int):
    from graphopt.data import load_data

    return load_data(path).take(limit) if path else None


def run(proto: onnx.ModelProto, data, batch: int, low: int | None) -> dict[str, np.ndarray]:
    from graphopt.passes.fp16 import convert as fp16_mod
    from graphopt.passes.fp16.verify import emulation_copy, run_outputs

    model = proto
    if low is not None:
        model, _ = emulation_copy(fp16_mod._fp32_io(proto), low)
    return run_outputs(model, data, batch)


def metrics(ref: dict, out: dict, labels) -> dict:
    from graphopt.verify import mean_cosine

    name = next(iter(ref))
    r, c = np.asarray(ref[name], np.float64), np.asarray(out[name], np.float64)
    finite = bool(np.isfinite(c).all())
    result = {"finite": finite}
    if not finite:
        result.update(max_abs=float("inf"), max_rel=float("inf"), metric=None)
        return result
    result["max_abs"] = float(np.max(np.abs(r - c)))
    result["max_rel"] = result["max_abs"] / max(float(np.max(np.abs(r))), 1e-12)
    if labels is not None and r.ndim == 2:
        result["metric"] = f"top-1 {100 * np.mean(c.argmax(1) == labels):.2f}% (ref {100 * np.mean(r.argmax(1) == labels):.2f}%)"
    elif r.ndim >= 2 and r.shape[-1] > 1 and r.ndim == 3:
        result["metric"] = f"argmax agree {100 * np.mean(r.argmax(-1) == c.argmax(-1)):.2f}%"
    else:
        result["metric"] = f"cosine {mean_cosine(r, c):.5f}"
    return result


def casts(proto: onnx.ModelProto) -> int:
    return sum(1 for n in proto.graph.node if n.op_type == "Cast")


def size(proto: onnx.ModelProto) -> int:
    return sum(len(i.raw_data) or onnx.numpy_helper.to_array(i).nbytes for i in proto.graph.initializer)


def low_type(proto: onnx.ModelProto) -> int | None:
    types = {i.data_type for i in proto.graph.initializer}
    return BF16 if BF16 in types else F16


def ours(proto, calib, precision: str, target: str):
    import onnx_ir as ir

    from graphopt.pass_base import PassContext
    from graphopt.passes.fp16 import Fp16Options, Fp16Pass
    from graphopt.target import Target

    p = Fp16Pass(Fp16Options(precision=precision)).bind(PassContext(Target(target), calib=calib))
    result = p(ir.from_proto(proto))
    return ir.to_proto(result.model), result.stats


def occ(proto):
    from onnxconverter_common.float16 import convert_float_to_float16

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = convert_float_to_float16(copy, keep_io_types=True)
    return out, {"library_warnings": len(caught)}


def _amp_worker(path: str, feed: dict, queue) -> None:
    import contextlib
    import io

    from onnxconverter_common.auto_mixed_precision import auto_convert_mixed_precision

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the library prints every attempt
                out = auto_convert_mixed_precision(onnx.load(path), feed, rtol=0.01, atol=0.001, keep_io_types=True)
        queue.put(out.SerializeToString())
    except Exception as exc:
        queue.put(f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}")


def amp(path: Path, feed: dict, timeout: float):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    worker = ctx.Process(target=_amp_worker, args=(str(path), feed, queue))
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        worker.kill()
        worker.join()
        return None, f"timed out after {timeout:.0f} s"
    got = queue.get() if not queue.empty() else "error: no result"
    if isinstance(got, str):
        return None, got
    return onnx.load_from_string(got), None


def bench_model(name: str, args) -> list[dict]:
    import onnx_ir as ir

    from graphopt.data import input_specs

    model_path, calib_path, eval_path = locate(name)
    proto = onnx.load(model_path)
    evaluation = load_npz(eval_path, args.samples)
    calib = load_npz(calib_path, args.samples) or evaluation
    batch = evaluation.batch_size_for(input_specs(ir.from_proto(proto)))
    ref = run(proto, evaluation, batch, None)
    rows = []
    variants = [(f"graphopt-{p}", lambda p=p: ours(proto, calib, p, args.target)) for p in args.precisions]
    variants.append(("occ-fp16", lambda: occ(proto)))
    for label, convert in variants:
        times, out, extra = [], None, {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            try:
                out, extra = convert()
            except Exception as exc:
                extra = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"}
                out = None
                break
            times.append(time.perf_counter() - start)
        rows.append(evaluate(name, label, proto, out, evaluation, batch, ref, times, extra))
    if args.amp_timeout > 0:
        feed = {k: v[:batch] for k, v in evaluation.inputs.items()}
        start = time.perf_counter()
        out, error = amp(model_path, feed, args.amp_timeout)
        rows.append(evaluate(name, "occ-amp", proto, out, evaluation, batch, ref, [time.perf_counter() - start],
                             {"error": error} if error else {}))
    return rows


def evaluate(name, label, proto, out, evaluation, batch, ref, times, extra) -> dict:
    row = {"model": name, "converter": label, **{k: v for k, v in extra.items() if k in ("error", "library_warnings")}}
    if out is None:
        return row
    row.update(seconds=statistics.median(times), size_ratio=size(out) / max(size(proto), 1),
               casts_added=casts(out) - casts(proto))
    try:
        row.update(metrics(ref, run(out, evaluation, batch, low_type(out)), evaluation.labels))
    except Exception as exc:
        row["error"] = f"does not run: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
    if "nodes_kept_fp32" in extra:
        row["kept_fp32"] = extra["nodes_kept_fp32"]
    return row


def table(rows: list[dict]) -> str:
    head = "| model | converter | size | max abs err | max rel err | task metric | Casts added | fp32 nodes | time (s) | notes |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        if "size_ratio" not in r:
            lines.append(f"| {r['model']} | {r['converter']} | – | – | – | – | – | – | – | {r.get('error', '')} |")
            continue
        finite = r.get("finite", False)
        lines.append(
            f"| {r['model']} | {r['converter']} | {r['size_ratio']:.3f} | "
            f"{r.get('max_abs', float('nan')):.3g} | {r.get('max_rel', float('nan')):.3g} | "
            f"{r.get('metric') if finite else 'NaN/Inf'} | {r['casts_added']} | {r.get('kept_fp32', '')} | "
            f"{r['seconds']:.2f} | {r.get('error', '') or (str(r['library_warnings']) + ' warnings' if r.get('library_warnings') else '')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "digits_mlp", "resnet18-224",
                                                        "transformer-encoder", "minilm-l6", "ppocr-rec"])
    parser.add_argument("--precisions", nargs="+", default=["fp16", "bf16"], choices=["fp16", "bf16"])
    parser.add_argument("--target", default="cuda", choices=["cpu", "cuda", "trt"])
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--amp-timeout", type=float, default=120.0, help="0 skips auto_convert_mixed_precision")
    parser.add_argument("--json", type=Path, default=Path("bench_fp16.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models:
        try:
            rows += bench_model(name, args)
        except Exception as exc:
            rows.append({"model": name, "converter": "-", "error": f"{type(exc).__name__}: {str(exc)[:160]}"})
        print(f"done {name}", file=sys.stderr, flush=True)
    print(table(rows))
    args.json.write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()
