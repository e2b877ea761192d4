"""CLI of the engine commands — ``graphopt build``, ``graphopt profile``, ``graphopt compare`` — and the
``optimize`` flags that measure the speed-up and end the pipeline with an engine build.

Only click is imported at module level (``graphopt --help`` stays fast); every command builds the
objects a Python user would build (:class:`graphopt.engines.build.BuildOptions`,
:class:`graphopt.profiling.profiler.ProfileOptions`, :class:`graphopt.verify.Tolerance`) and calls the
library.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

PROVIDERS = ("cpu", "cuda", "trt")
ENGINES = ("ort", "trt")
TARGETS = ("cpu", "cuda", "trt")
SHAPES_HELP = ("Shape range of a dynamic input, NAME:MIN:OPT:MAX with dims joined by x "
               "(input:1x3x224x224:8x3x224x224:32x3x224x224); NAME:DIMS fixes it. Repeat for several inputs.")


def parse_batches(text: str | None) -> tuple[int, ...] | None:
    """``"1,8,32"`` → ``(1, 8, 32)``; one-line error for anything else."""
    from graphopt.errors import InputError

    if text is None:
        return None
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"--batch expects sizes like 1,8,32, got {text!r}") from None
    if not values or min(values) < 1:
        raise InputError(f"--batch expects sizes ≥ 1 like 1,8,32, got {text!r}")
    return values


def _json_out(data: dict, path: Path | None) -> None:
    """Write JSON atomically to ``path``."""
    from graphopt.model_io import write_atomic

    if path is not None:
        write_atomic(path, json.dumps(data, indent=2, default=str))


def _check_writable(path: Path | None, what: str) -> None:
    from graphopt.errors import InputError

    if path is None:
        return
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{what} folder does not exist: {folder}")


def _load_data(path: Path | None):
    if path is None:
        return None
    from graphopt.data import load_data

    return load_data(path)


def _console():
    from graphopt.cli import report_console

    return report_console()


# ------------------------------------------------------------------------------------------- build
@click.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Engine directory to write (created; an earlier engine directory there is replaced).")
@click.option("--engine", type=click.Choice(ENGINES), default="ort", show_default=True,
              help="ort: ONNX Runtime session files; trt: a TensorRT plan (extra graphopt[trt], NVIDIA GPU).")
@click.option("--target", type=click.Choice(TARGETS),
              help="cpu / cuda / trt [default: trt for --engine trt, else the best this machine runs].")
@click.option("--allow-fallback", is_flag=True,
              help="Go on when the target's provider does not load, recording the providers that really ran.")
@click.option("--shapes", multiple=True, metavar="NAME:MIN:OPT:MAX", help=SHAPES_HELP)
@click.option("--batch", "batch_text", metavar="1,8,32", help="Batch sizes to serve (derived TensorRT profiles span them).")
@click.option("--data", "data_path", type=click.Path(path_type=Path),
              help="Sample inputs (.npz): other dynamic dims of derived profiles are taken from them.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads recorded for onnxruntime CPU sessions.")
@click.option("--workspace-mb", type=click.IntRange(min=1), default=4096, show_default=True,
              help="TensorRT workspace limit.")
@click.option("--opt-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimization level.")
@click.option("--timing-cache", type=click.Path(path_type=Path),
              help="TensorRT timing cache to start from and update (shared between builds).")
@click.option("--json", "as_json", is_flag=True, help="Print engine.json on stdout instead of the summary.")
def build(model: Path, out_dir: Path, engine: str, target: str | None, allow_fallback: bool, shapes: tuple[str, ...],
          batch_text: str | None, data_path: Path | None, threads: int | None, workspace_mb: int, opt_level: int,
          timing_cache: Path | None, as_json: bool) -> None:
    """Build a deployable engine directory (with engine.json) for MODEL on a target."""
    from graphopt.console import stderr
    from graphopt.engines.build import BuildOptions, build_engine
    from graphopt.engines.shapes import parse_shapes
    from graphopt.errors import InputError
    from graphopt.target import make_target

    if not model.exists():
        raise InputError(f"model file not found: {model}")
    if target is None and engine == "trt":
        target = "trt"
    elif target is None:
        target = make_target(None).kind
        stderr.print(f"target: {target} (auto-detected; pass --target in deployment pipelines)")
    options = BuildOptions(engine=engine, target=target, allow_fallback=allow_fallback, shapes=parse_shapes(shapes),
                           batches=parse_batches(batch_text) or (1,), threads=threads,
                           workspace_bytes=workspace_mb << 20, builder_optimization_level=opt_level,
                           timing_cache=timing_cache)
    manifest = build_engine(model, out_dir, options, data=_load_data(data_path))
    if as_json:
        click.echo(json.dumps(manifest.to_dict(), indent=2, default=str))
        return
    render_build(manifest, out_dir)


def render_build(manifest, out_dir: Path) -> None:
    from rich.table import Table

    from graphopt.console import stderr

    table = Table(title="graphopt build", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    table.add_row("engine", f"{manifest.engine} for target {manifest.target.get('kind')}")
    runtime = manifest.ort or {}
    trt = manifest.tensorrt or {}
    providers = ", ".join(runtime.get("providers") or []) or (f"TensorRT {trt.get('version')} on "
                                                             f"{(trt.get('gpu') or {}).get('name')}")
    table.add_row("directory", str(out_dir))
    table.add_row("runs on", providers)
    table.add_row("precision", manifest.precision)
    table.add_row("files", ", ".join(sorted(manifest.files.values())) + ", engine.json")
    for name, shape_range in manifest.profile.items():
        table.add_row(f"profile {name}", " : ".join("x".join(map(str, shape_range[k])) for k in ("min", "opt", "max")))
    _console().print(table)
    if runtime.get("fallback_reason"):
        stderr.print(f"[yellow]warning:[/yellow] {runtime['providers_requested'][0]} did not load "
                     f"({runtime['fallback_reason']}); the engine ran on {', '.join(runtime['providers'])}")


# ------------------------------------------------------------------------------------------- profile
@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--provider", type=click.Choice(PROVIDERS), help="Provider for ONNX files [default: cpu]; "
              "engine directories run on their own target.")
@click.option("--batch", "batch_text", metavar="1,8,32", help="Batch sizes to time [default: the fixed batch, else 1].")
@click.option("--shapes", multiple=True, metavar="NAME:MIN:OPT:MAX", help="Other dynamic dims are timed at OPT. " + SHAPES_HELP)
@click.option("--data", "data_path", type=click.Path(path_type=Path), help="Time on these inputs (.npz) instead of probe inputs.")
@click.option("--warmup", type=click.IntRange(min=0), default=10, show_default=True, help="Untimed runs per engine.")
@click.option("--iters", type=click.IntRange(min=1), help="Timed rounds per batch size [default: 100].")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), help="Time each batch size for this long instead.")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads of CPU sessions [default: one per physical core].")
@click.option("--allow-fallback", is_flag=True, help="Run on the providers that load when the requested one does not (reported).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write every statistic and timing as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path), help="Write a PNG of p50 latency vs batch (extra graphopt[plot]).")
def profile(models: tuple[Path, ...], provider: str | None, batch_text: str | None, shapes: tuple[str, ...],
            data_path: Path | None, warmup: int, iters: int | None, seconds: float | None, threads: int | None,
            allow_fallback: bool, json_path: Path | None, plot_path: Path | None) -> None:
    """Time MODELS (ONNX files or engine directories) interleaved, with ratios to the first."""
    from graphopt.console import stderr
    from graphopt.engines.shapes import parse_shapes
    from graphopt.profiling.profiler import ProfileOptions, profile_engines
    from graphopt.profiling.render import engines_table, profile_table

    _check_writable(json_path, "--json")
    _check_writable(plot_path, "--plot")
    if plot_path is not None:
        from graphopt.profiling.plot import require_matplotlib

        require_matplotlib()
    options = ProfileOptions(provider=provider, batches=parse_batches(batch_text), shapes=parse_shapes(shapes) or None,
                             warmup=warmup, iterations=iters, seconds=seconds, threads=threads,
                             allow_fallback=allow_fallback)
    result = profile_engines(list(models), options, data=_load_data(data_path))
    console = _console()
    console.print(profile_table(result))
    console.print(engines_table(result))
    for engine in result.engines:
        if engine.fallback_reason:
            stderr.print(f"[yellow]warning:[/yellow] {engine.label}: asked for {engine.requested}, ran on "
                         f"{', '.join(engine.providers)} ({engine.fallback_reason})")
        for warning in engine.warnings:
            stderr.print(f"[yellow]warning:[/yellow] {engine.label}: {warning}")
    _json_out(result.to_dict(), json_path)
    if plot_path is not None:
        from graphopt.profiling.plot import write_plot

        write_plot(result, plot_path)
        stderr.print(f"wrote {plot_path}")


# ------------------------------------------------------------------------------------------- compare
@click.command()
@click.argument("reference", type=click.Path(path_type=Path))
@click.argument("candidate", type=click.Path(path_type=Path))
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Inputs to run both on (.npz; optional 'labels' for accuracy).")
@click.option("--provider", type=click.Choice(PROVIDERS), help="Provider for ONNX files [default: cpu].")
@click.option("--candidate-provider", type=click.Choice(PROVIDERS), help="Provider for the candidate if it differs.")
@click.option("--atol", type=click.FloatRange(min=0), help="Pass when every element is within atol + rtol·|ref|.")
@click.option("--rtol", type=click.FloatRange(min=0), help="See --atol.")
@click.option("--min-cosine", type=click.FloatRange(-1, 1), help="Pass when every float output's mean cosine is at least this.")
@click.option("--max-accuracy-drop", type=click.FloatRange(min=0), metavar="PCT", help="Pass when the quality drop (by --metric) is at most this.")
@click.option("--metric", type=click.Choice(("auto", "accuracy", "agreement", "cosine", "ctc")), default="auto",
              show_default=True, help="How outputs are judged for --max-accuracy-drop (as in optimize).")
@click.option("--threads", type=click.IntRange(min=1), help="Intra-op threads of CPU sessions.")
@click.option("--allow-fallback", is_flag=True, help="Run on the providers that load when the requested one does not (reported).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the comparison as JSON here.")
def compare(reference: Path, candidate: Path, data_path: Path, provider: str | None, candidate_provider: str | None,
            atol: float | None, rtol: float | None, min_cosine: float | None, max_accuracy_drop: float | None,
            metric: str, threads: int | None, allow_fallback: bool, json_path: Path | None) -> None:
    """Compare CANDIDATE's outputs with REFERENCE's (ONNX files or engine directories); exit 1 on fail.

    Without --atol/--rtol/--min-cosine/--max-accuracy-drop the rule is atol 1e-5, rtol 1e-3."""
    from graphopt.compare import compare_engines
    from graphopt.errors import QualityGateError
    from graphopt.verify import Tolerance

    _check_writable(json_path, "--json")
    given = Tolerance(atol, rtol, min_cosine, max_accuracy_drop)
    tolerance = given if any(v is not None for v in (atol, rtol, min_cosine, max_accuracy_drop)) else None
    result = compare_engines(reference, candidate, _load_data(data_path), provider=provider,
                             candidate_provider=candidate_provider, tolerance=tolerance, metric=metric,
                             threads=threads, allow_fallback=allow_fallback)
    _json_out(result.to_dict(), json_path)
    render_compare(result)
    if not result.passed:
        raise QualityGateError(f"candidate differs from the reference: {result.failures[0]}"
                               + (f" (+{len(result.failures) - 1} more)" if len(result.failures) > 1 else ""))


def render_compare(result) -> None:
    from rich.table import Table

    def fmt(value, digits: int = 4) -> str:
        return "–" if value is None else f"{value:.{digits}g}"

    ref, cand = result.reference, result.candidate
    table = Table(title=f"graphopt compare · {cand['path']} ({', '.join(cand['providers'])}) vs {ref['path']} "
                        f"({', '.join(ref['providers'])}) on {result.samples} samples", title_justify="left")
    for column in ("output", "metric", "value", "max abs", "max rel", "cosine", "top-1", "top-5", "outside tol", "verdict"):
        table.add_column(column, justify="left" if column in ("output", "metric", "verdict") else "right")
    failing = {line.split(":", 1)[0] for line in result.failures}
    for m in result.comparison.metrics:
        table.add_row(m.output, m.kind, fmt(m.value, 6), fmt(m.max_abs_error), fmt(m.max_rel_error), fmt(m.cosine, 6),
                      fmt(m.top1_agreement), fmt(m.top5_agreement), fmt(m.outside_tolerance),
                      "[red]fail[/red]" if m.output in failing else "pass")
    rules = ", ".join(f"{k} {v:g}" for k, v in result.tolerance.to_dict().items() if v is not None)
    table.caption = f"rule: {rules} · " + ("[green]PASS[/green]" if result.passed else "[red]FAIL[/red]")
    _console().print(table)
    for side in (ref, cand):
        if side["fallback_reason"]:
            from graphopt.console import stderr

            stderr.print(f"[yellow]warning:[/yellow] {side['path']}: asked for {side['requested']}, ran on "
                         f"{', '.join(side['providers'])} ({side['fallback_reason']})")


COMMANDS = (build, profile, compare)


def register(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)


# ------------------------------------------------------------------------------------------- optimize
OPTIMIZE_OPTIONS = [
    click.option("--latency-budget", type=click.FloatRange(min=0), metavar="SECONDS",
                 help="Time original vs optimized interleaved for this long, when the target is this machine "
                      "[default: 2, or $GRAPHOPT_LATENCY_BUDGET; 0 = off]."),
    click.option("--no-latency", is_flag=True, help="Do not measure the latency of the original and optimized model."),
    click.option("--engine", type=click.Choice(ENGINES), help="End the pipeline with an engine build (see `graphopt build`)."),
    click.option("--engine-dir", type=click.Path(path_type=Path), help="Engine directory [default: <output stem>.<engine>/]."),
    click.option("--allow-fallback", is_flag=True, help="With --engine: go on when the target's provider does not load."),
    click.option("--shapes", multiple=True, metavar="NAME:MIN:OPT:MAX", help="With --engine: " + SHAPES_HELP),
]
_OPTIMIZE_KEYS = ("latency_budget", "no_latency", "engine", "engine_dir", "allow_fallback", "shapes")


def with_optimize_options(command):
    for option in reversed(OPTIMIZE_OPTIONS):
        command = option(command)
    return command


def optimize_arguments(params: dict, output: Path, target: str | None) -> dict:
    """Pop this module's optimize flags from ``params``; returns ``graphopt.optimize`` keyword arguments."""
    from graphopt.errors import InputError

    values = {key: params.pop(key, None) for key in _OPTIMIZE_KEYS}
    arguments: dict = {}
    if values["no_latency"]:
        if values["latency_budget"] is not None:
            raise InputError("give --latency-budget or --no-latency, not both")
        arguments["latency_budget"] = 0.0
    elif values["latency_budget"] is not None:
        arguments["latency_budget"] = values["latency_budget"]
    if values["engine"] is None:
        given = [f"--{k.replace('_', '-')}" for k in ("engine_dir", "allow_fallback", "shapes") if values[k]]
        if given:
            raise InputError(f"{', '.join(given)} only apply with --engine ort|trt")
        return arguments
    from graphopt.engines.build import BuildOptions
    from graphopt.engines.shapes import parse_shapes

    engine_target = target or ("trt" if values["engine"] == "trt" else None)
    if engine_target is None:
        from graphopt.target import make_target

        engine_target = make_target(None).kind
    arguments["engine"] = BuildOptions(engine=values["engine"], target=engine_target,
                                       allow_fallback=bool(values["allow_fallback"]), shapes=parse_shapes(values["shapes"]))
    name = output.name[: -len(".onnx")] if output.name.endswith(".onnx") else output.name
    arguments["engine_dir"] = values["engine_dir"] or output.with_name(f"{name}.{values['engine']}")
    return arguments
