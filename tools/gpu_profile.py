"""Short GPU profile of the reference models: fp32 / fp16 / int8 on the CUDA provider, the TensorRT
provider and TensorRT plans, one table. Run by tools/gpu_check.sh; installs nothing.

    python tools/gpu_profile.py [--models digits-cnn,resnet18-224] [--iters 50] [--batch 1,8] [--out DIR]

Variants are made with graphopt itself (fp16: ``simplify, fp16`` for target cuda; int8: ``simplify, int8``
for target trt on the model's calibration data). For every provider the three variants of a model are
timed interleaved by graphopt's profiler (device-resident inputs and with host↔device copies). Models
whose files are absent (on-demand models not built here) and providers that do not load are listed
under "not run" with the reason — never replaced by a CPU run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from graphopt.errors import GraphoptError, first_line  # noqa: E402
from tools.bench_lib import markdown_table  # noqa: E402

DEFAULT_MODELS = "digits-cnn,digits-mlp,resnet18-224,transformer-encoder,minilm-l6,ppocr-det,ppocr-rec"


def _files(name: str):
    """The model's files if they exist here (nothing is built or downloaded)."""
    from models.registry import BUILD_DIR, MODELS_DIR, get_model

    entry = get_model(name)
    stem = name.replace("-", "_")
    folder = MODELS_DIR if entry.committed else BUILD_DIR
    model, calib = folder / f"{stem}.onnx", folder / f"{stem}_calib.npz"
    if not model.is_file() or not calib.is_file():
        return None
    return model, calib


def _variants(model: Path, calib: Path, workdir: Path) -> dict[str, Path]:
    import graphopt
    from graphopt.passes.fp16 import Fp16Pass
    from graphopt.passes.int8 import Int8Pass
    from graphopt.passes.simplify import SimplifyPass

    out = {"fp32": model}
    fp16 = workdir / f"{model.stem}.fp16.onnx"
    graphopt.optimize(model, fp16, passes=[SimplifyPass(), Fp16Pass()], calib_data=calib, target="cuda", cache=False,
                      latency_budget=0)
    out["fp16"] = fp16
    int8 = workdir / f"{model.stem}.int8.onnx"
    graphopt.optimize(model, int8, passes=[SimplifyPass(), Int8Pass()], calib_data=calib, target="trt", cache=False,
                      latency_budget=0)
    out["int8"] = int8
    return out


def _reason(exc: BaseException) -> str:
    return first_line(exc) if isinstance(exc, GraphoptError) else f"{type(exc).__name__}: {first_line(exc)}"


def _rows(model: str, run_name: str, variants: list[str], result) -> list[list[str]]:
    """Table rows of one interleaved run: device-resident p50, p50 with copies, ratio to fp32 of the
    same batch and mode ("–" when fp32 is not in the run), GPU memory the engine added."""
    rows = []
    by_variant = dict(zip(variants, result.engines))
    for variant, engine in by_variant.items():
        for m in engine.measurements:
            if m.mode != "device":
                continue
            copies = next(x for x in engine.measurements if x.batch == m.batch and x.mode == "host")
            fp32 = by_variant.get("fp32")
            base = next((x for x in fp32.measurements if x.batch == m.batch and x.mode == "device"), None) if fp32 else None
            ratio = f"{m.stats.p50_ms / base.stats.p50_ms:.3f}" if base else "–"
            memory = "–" if engine.gpu_memory_bytes is None else f"{engine.gpu_memory_bytes / 2**20:.0f}"
            rows.append([model, variant, run_name, str(m.batch), f"{m.stats.p50_ms:.3f}", f"{copies.stats.p50_ms:.3f}",
                         ratio, memory, ", ".join(engine.providers)])
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--batch", default="1,8")
    parser.add_argument("--out", type=Path, default=Path("gpu_check_results"))
    args = parser.parse_args()
    from graphopt.engines.build import BuildOptions, build_engine
    from graphopt.engines.providers import ProviderUnavailableError, check_provider_loads
    from graphopt.profiling.profiler import ProfileOptions, profile_engines
    from graphopt.target import cuda_gpus

    args.out.mkdir(parents=True, exist_ok=True)
    batches = tuple(int(b) for b in args.batch.split(","))
    gpus = cuda_gpus()
    gpu = f"{gpus[0].name} (sm_{gpus[0].compute_capability[0]}{gpus[0].compute_capability[1]})" if gpus else "no GPU"
    rows, not_run, results = [], [], {}
    providers = {}
    for provider in ("cuda", "trt"):
        try:
            check_provider_loads(provider)
            providers[provider] = None
        except Exception as exc:
            providers[provider] = exc.reason if isinstance(exc, ProviderUnavailableError) else _reason(exc)
            not_run.append(f"onnxruntime {provider} provider: {providers[provider]}")
    try:
        from graphopt.engines.trt import import_tensorrt

        import_tensorrt()
        plans_possible = None
    except Exception as exc:
        plans_possible = _reason(exc)
        not_run.append(f"TensorRT plans: {plans_possible}")
    runnable = plans_possible is None or any(reason is None for reason in providers.values())
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.models.split(",") if runnable else []:
            files = _files(name)
            if files is None:
                not_run.append(f"{name}: model files not present here (built on demand by `python -m models {name}`)")
                continue
            try:
                variants = _variants(*files, workdir)
            except Exception as exc:  # a check script reports and goes on; it never stops at one model
                not_run.append(f"{name}: variants could not be made: {_reason(exc)}")
                continue
            runs = {f"ort-{p}": (dict(variants), p) for p, reason in providers.items() if reason is None}
            if plans_possible is None:
                plans = {}
                for variant, path in variants.items():
                    plan_dir = workdir / f"{name}.{variant}.plan"
                    try:
                        build_engine(path, plan_dir, BuildOptions(engine="trt", target="trt", batches=batches))
                        plans[variant] = plan_dir
                    except Exception as exc:
                        not_run.append(f"{name} {variant}: TensorRT plan not built: {_reason(exc)}")
                if plans:
                    runs["trt-plan"] = (plans, None)
            for run_name, (sources, provider) in runs.items():
                try:
                    result = profile_engines(list(sources.values()), ProfileOptions(provider=provider, batches=batches,
                                                                                   iterations=args.iters))
                except Exception as exc:
                    not_run.append(f"{name} on {run_name}: {_reason(exc)}")
                    continue
                results[f"{name}/{run_name}"] = result.to_dict()
                rows.extend(_rows(name, run_name, list(sources), result))
    table = markdown_table(["model", "variant", "engine", "batch", "p50 ms (device)", "p50 ms (+copies)", "× fp32",
                            "GPU +MB", "ran on"], rows)
    text = f"GPU: {gpu}\n\n{table if rows else '(no GPU measurement could run)'}\n"
    if not_run:
        text += "\nnot run:\n" + "\n".join(f"- {line}" for line in not_run) + "\n"
    print(text)
    (args.out / "gpu_profile.md").write_text(text)
    (args.out / "gpu_profile.json").write_text(json.dumps({"gpu": gpu, "not_run": not_run, "results": results},
                                                          indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
