"""The ``graphopt`` command line. It only builds the objects a Python user would build.

Exit codes: 0 success, 1 a quality gate failed (or a pass could not produce a valid model),
2 bad input or usage, 130 interrupted. Errors print one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from graphopt import cli_engines
from graphopt.target import TARGET_KINDS
from graphopt.verify import METRIC_CHOICES

EXIT_INTERRUPTED = 130


class GraphoptGroup(click.Group):
    """Maps graphopt errors to one-line messages and exit codes."""

    def invoke(self, ctx: click.Context):
        from graphopt.errors import GraphoptError

        debug = "--debug" in sys.argv or bool(ctx.params.get("debug"))
        try:
            return super().invoke(ctx)
        except GraphoptError as exc:
            if debug:
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing was written", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:
            if debug:
                raise
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            click.echo(f"internal error: {type(exc).__name__}: {first} (rerun with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=GraphoptGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="graphopt")
def main(debug: bool) -> None:
    """graphopt: make ONNX models smaller and faster for a target, and prove they still work."""


# Each pass that has flags owns a `graphopt/cli_<pass>.py` module with `OPTIONS` (click options)
# and `build_pass(params) -> GraphoptPass | None`; listed here in pipeline order.
PASS_FLAG_MODULES = ["graphopt.cli_simplify", "graphopt.cli_prune", "graphopt.cli_distill", "graphopt.cli_int8",
                     "graphopt.cli_fp16"]


def _pass_flag_modules():
    import importlib

    return [importlib.import_module(name) for name in PASS_FLAG_MODULES]


def _with_pass_flags(command):
    for module in reversed(_pass_flag_modules()):
        for option in reversed(module.OPTIONS):
            command = option(command)
    return command


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Output model [default: <stem>.opt.onnx].")
@_with_pass_flags
@click.option("--calib-data", type=click.Path(path_type=Path), help="Calibration data: .npz or a folder of them.")
@click.option("--eval-data", type=click.Path(path_type=Path), help="Evaluation data (.npz, optional 'labels') to prove accuracy.")
@click.option("--train-data", type=click.Path(path_type=Path), help="Training data for --distill (.npz, optional 'labels'; not the eval data).")
@click.option("--target", type=click.Choice(TARGET_KINDS), help="Where the model will run [default: best this machine runs].")
@click.option("--max-accuracy-drop", type=float, metavar="PCT", help="Largest allowed quality drop, percentage points.")
@click.option("--metric", type=click.Choice(METRIC_CHOICES),
              help="How outputs are judged: accuracy (labels), agreement (argmax over the last axis, per position "
                   "for sequences), cosine, ctc (text a CTC recogniser decodes, blank 0) "
                   "[default: auto, from labels and output names].")
@click.option("--report", "report_path", type=click.Path(path_type=Path), help="Write the report as JSON here.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout instead of the table.")
@click.option("--config", type=click.Path(path_type=Path), help="Pipeline file (YAML or JSON) listing passes and options.")
@click.option("--cache-dir", type=click.Path(path_type=Path), help="Pass-result cache [default: $GRAPHOPT_CACHE_DIR or ~/.cache/graphopt].")
@click.option("--no-cache", is_flag=True, help="Do not read or write the pass-result cache.")
@cli_engines.with_optimize_options
@click.pass_context
def optimize(ctx: click.Context, model: Path, output: Path | None, calib_data: Path | None,
             eval_data: Path | None, train_data: Path | None, target: str | None, max_accuracy_drop: float | None, metric: str | None,
             report_path: Path | None, as_json: bool, config: Path | None, cache_dir: Path | None, no_cache: bool, **pass_flags) -> None:
    """Optimize MODEL for a target and report what changed and how accurate it stays."""
    from graphopt.api import default_output_path
    from graphopt.api import optimize as run_optimize
    from graphopt.console import set_progress, stderr
    from graphopt.errors import InputError, QualityGateError
    from graphopt.model_io import check_output_path
    from graphopt.pipeline import Pipeline
    from graphopt.target import make_target

    output = output or default_output_path(model)
    engine_arguments = cli_engines.optimize_arguments(pass_flags, output, target)
    if target is None and "engine" in engine_arguments:  # --engine trt implies --target trt
        target = engine_arguments["engine"].target
    check_output_path(output, model)
    if report_path is not None:
        check_output_path(report_path, model)
    if config is not None:
        explicit = [name for name in pass_flags if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if explicit:
            raise InputError(f"--config lists the passes; do not also give pass flags ({', '.join(explicit)})")
        pipeline = Pipeline.from_file(config)
    else:
        pipeline = Pipeline(pass_list_from_flags(pass_flags), None, None)
    if target is not None:
        pipeline.target = target
    if not pipeline.passes:
        raise InputError("no passes to run: enable at least one (e.g. --simplify)")
    if not model.exists():  # before target detection, so the first line is the real problem
        raise InputError(f"model file not found: {model}")
    set_progress(not as_json)
    resolved = make_target(pipeline.target)
    stderr.print(f"target: {resolved.describe()}" + ("" if pipeline.target else " (pass --target in deployment pipelines)"))
    result = run_optimize(model, output, pipeline=pipeline, calib_data=calib_data, eval_data=eval_data,
                          train_data=train_data, target=resolved, max_accuracy_drop=max_accuracy_drop, metric=metric,
                          cache=not no_cache, cache_dir=cache_dir, **engine_arguments)
    if report_path is not None:
        result.report.write_json(report_path)
    if as_json:
        click.echo(json.dumps(result.report.to_dict(), indent=2, default=str))
    else:
        result.report.render(report_console())
    if not result.passed:
        gate = result.report.quality_gate or {}
        hints = [p.gate_hint for p in pipeline.passes if getattr(p, "gate_hint", None)]
        raise QualityGateError(
            f"accuracy budget missed: quality dropped {gate.get('drop', 0):.2f} points "
            f"(allowed {gate.get('max_accuracy_drop')}); "
            + (f"best model written to {result.output_path} (--keep-best)" if result.output_path else "no output written")
            + "".join(f"; {hint}" for hint in hints)
        )
    if not as_json:
        stderr.print(f"wrote {result.output_path}")


def report_console():
    """Console for the final table: the terminal's width, or 140 columns when piped to a file/log."""
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else Console(width=140)


def pass_list_from_flags(params: dict):
    """The passes the optimize flags ask for, in pipeline order."""
    passes = []
    for module in _pass_flag_modules():
        built = module.build_pass(params)
        if built is not None:
            passes.append(built)
    return passes


@main.command()
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--shape", "shapes", multiple=True, metavar="NAME=1x3x224x224", help="Fix an input's shape for FLOP counting.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def inspect(model: Path, shapes: tuple[str, ...], as_json: bool) -> None:
    """Describe MODEL: inputs/outputs, opset, ops, parameters, sparsity, MACs, precision."""
    from graphopt.inspection import inspect_model, parse_shape_overrides, render_inspection

    info = inspect_model(model, parse_shape_overrides(shapes))
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
    else:
        render_inspection(info, report_console())


def _add_cache_command() -> None:
    from graphopt.cli_cache import cache

    main.add_command(cache)


_add_cache_command()

cli_engines.register(main)

if __name__ == "__main__":  # pragma: no cover
    main()
