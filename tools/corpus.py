"""Models nobody tuned for: every float model of the ONNX node test suite and the committed registry models,
run through ``graphopt optimize`` as a user would, and judged.

    python tools/corpus.py [--jobs 2] [--passes simplify,fp16,int8] [--only REGEX] [--fast] [--json PATH]
                           [--timeout 180] [--show-failures 60] [--probe-inputs]

**Corpus.** The ONNX package's single-operator models (``onnx/backend/test/data/node/*/model.onnx`` with
``test_data_set_0``'s inputs and expected outputs), and the other model folders it ships with test data
(:data:`SHIPPED_GROUPS`: old PyTorch exports at opset 6 / IR 3, small multi-node models). Wheels that do not
ship the node folder still ship the test cases that generate it (``onnx.backend.test.case.node``): they are written once, the way onnx's own
``backend-test-tools generate-data`` writes them, into ``$GRAPHOPT_CORPUS_DIR`` (default
``~/.cache/graphopt/corpus/onnx-<version>``). A model is *float* when all its inputs and outputs are tensors
and one of them is float32. The committed registry models (``models/registry.py``) join with their first eval
samples as inputs and onnxruntime's outputs on the original as expected outputs.

**Runs.** For each model, as a user would (``--no-cache``, the test inputs as ``--eval-data``, an ``.npz`` with
the arrays as they are; ``--probe-inputs``: no data, as a user who has none):

* ``simplify`` — ``graphopt optimize M -o OUT --target cpu``;
* ``fp16`` — ``graphopt optimize M -o OUT --fp16 --target cuda`` (the written model is checked with the fp16
  pass's emulation copy: onnxruntime CPU with the target's rounding, :mod:`graphopt.passes.fp16.verify`);
* ``int8`` — ``graphopt optimize M -o OUT --int8 --calib-random --target cpu``.

**Judgement.** Each run ends in exactly one class:

* ``valid`` — exit 0, the written model passes ``onnx.checker`` (full check, unless the original fails that
  too: then the plain check) and its outputs on the test
  inputs are within tolerance of the expected outputs (:data:`TOLERANCE`, scaled by the output's largest
  magnitude; int8: cosine similarity, :data:`INT8_MIN_COSINE`; integer and bool outputs exact);
* ``refused`` — exit 1 or 2 with one ``error:`` line (its reason is counted) and no output file left;
* ``not counted`` — onnxruntime cannot run the original model, neither as it is nor upgraded to opset 17
  (:mod:`graphopt.opset_upgrade`: old exports whose ops lost their kernels are counted), or its outputs on
  the original disagree with the expected outputs by more than the test case's own tolerance (nothing to
  compare a result against);
* ``FAILURE`` — anything else: an internal error or traceback, an invalid model written, an output file left
  after a failure, outputs out of tolerance, a crash of the process, a timeout.

Runs go to ``--jobs`` worker processes (each runs many models; one that dies or exceeds ``--timeout`` is
replaced and the run counts as a FAILURE). Prints a summary table (pass rates over counted runs, refusal
reasons counted, the failures); ``--json`` writes every run. Exit status 1 when any run is a FAILURE.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PASSES = ("simplify", "fp16", "int8")
PASS_ARGS = {
    "simplify": ["--target", "cpu"],
    "fp16": ["--fp16", "--target", "cuda"],
    "int8": ["--int8", "--calib-random", "--target", "cpu"],
}
TOLERANCE = {"simplify": (1e-3, 1e-5), "fp16": (2e-2, 1e-3)}
"""(rtol, atol) per pass: an output is within tolerance when ``max|Δ| ≤ atol + rtol·max|expected|``."""
INT8_MIN_COSINE = 0.99
"""int8 (calibrated on random inputs) is judged as graphopt judges int8: each float output's cosine
similarity to the expected output (flattened) at least this; integer outputs exact."""

FAST_SUBSET = (
    "test_abs", "test_add_bcast", "test_averagepool_2d_pads", "test_batchnorm_epsilon", "test_cast_FLOAT_to_FLOAT16",
    "test_clip", "test_concat_2d_axis_0", "test_conv_with_strides_padding", "test_convtranspose",
    "test_div", "test_matmul_3d", "test_elu", "test_exp", "test_gather_0",
    "test_gemm_all_attributes", "test_globalaveragepool", "test_instancenorm_example", "test_layer_normalization_2d_axis0",
    "test_logsoftmax_axis_1", "test_matmul_2d", "test_maxpool_2d_pads", "test_mean_two_inputs", "test_pow",
    "test_reduce_mean_keepdims_example", "test_relu", "test_reshape_reordered_all_dims", "test_sigmoid",
    "test_softmax_axis_1", "test_split_equal_parts_1d_opset13", "test_transpose_default", "test_where_example",
    "pytorch-converted/test_BatchNorm2d_eval", "pytorch-converted/test_Conv2d", "pytorch-converted/test_Linear",
    "pytorch-operator/test_operator_addmm", "pytorch-operator/test_operator_pow", "simple/test_single_relu_model", "registry_digits-cnn",
)
"""The fixed fast subset (``--fast``, tests/test_corpus.py): one or two models of each common op family."""


@dataclass
class Entry:
    """One corpus model: a folder with ``model.onnx`` and ``test_data_set_0/{input,output}_N.pb``."""

    name: str
    folder: str
    rtol: float = 1e-3
    atol: float = 1e-7


@dataclass
class Run:
    name: str
    pass_name: str
    status: str
    """``valid`` | ``refused`` | ``not counted`` | ``FAILURE``."""
    reason: str = ""
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- corpus


def corpus_dir() -> Path:
    import onnx

    default = Path.home() / ".cache" / "graphopt" / "corpus" / f"onnx-{onnx.__version__}"
    return Path(os.environ.get("GRAPHOPT_CORPUS_DIR", default))


SHIPPED_GROUPS = ("pytorch-converted", "pytorch-operator", "simple")
"""Other model folders the onnx package ships with test data: old PyTorch exports (opset 6, IR 3) and small
multi-node models."""


def node_entries(names: set[str] | None = None) -> list[Entry]:
    """The float node-test models, from the onnx package's data folder or generated from its test cases, and
    the float models of :data:`SHIPPED_GROUPS` (named ``group/model``)."""
    import onnx

    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    shipped = data / "node"
    if shipped.is_dir() and any(shipped.iterdir()):
        folders = sorted(p for p in shipped.iterdir() if (p / "model.onnx").exists())
        entries = [Entry(p.name, str(p)) for p in folders if names is None or p.name in names]
    else:
        entries = _generated_entries(names)
    for group in SHIPPED_GROUPS:
        folders = sorted(p for p in (data / group).glob("*") if (p / "test_data_set_0").is_dir())
        entries += [Entry(f"{group}/{p.name}", str(p)) for p in folders
                    if names is None or f"{group}/{p.name}" in names]
    return [e for e in entries if _is_float_model(Path(e.folder) / "model.onnx")]


def _generated_entries(names: set[str] | None) -> list[Entry]:
    from onnx import numpy_helper
    from onnx.backend.test.case import node as node_cases

    root = corpus_dir() / "node"
    index = root / "index.json"
    if index.exists():
        known = json.loads(index.read_text())
    else:
        known = {}
        with contextlib.redirect_stderr(io.StringIO()), np.errstate(all="ignore"):
            cases = node_cases.collect_testcases(None)
        for case in cases:
            folder = root / case.name
            known[case.name] = {"rtol": case.rtol, "atol": case.atol}
            if not case.data_sets or not _tensor_io(case.model):
                continue
            data = folder / "test_data_set_0"
            data.mkdir(parents=True, exist_ok=True)
            (folder / "model.onnx").write_bytes(case.model.SerializeToString())
            inputs, outputs = case.data_sets[0]
            for prefix, values, infos in (("input", inputs, case.model.graph.input),
                                          ("output", outputs, case.model.graph.output)):
                for j, (value, info) in enumerate(zip(values, infos)):
                    tensor = value if hasattr(value, "SerializeToString") else numpy_helper.from_array(
                        np.asarray(value), info.name)
                    (data / f"{prefix}_{j}.pb").write_bytes(tensor.SerializeToString())
        root.mkdir(parents=True, exist_ok=True)
        index.write_text(json.dumps(known, indent=0, sort_keys=True))
    return [Entry(name, str(root / name), tol["rtol"], tol["atol"]) for name, tol in sorted(known.items())
            if (names is None or name in names) and (root / name / "model.onnx").exists()]


def _tensor_io(model) -> bool:
    return all(v.type.HasField("tensor_type") for v in [*model.graph.input, *model.graph.output])


def _is_float_model(path: Path) -> bool:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    if not _tensor_io(model):
        return False
    return any(v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for v in [*model.graph.input, *model.graph.output])


def registry_entries(names: set[str] | None = None, samples: int = 8) -> list[Entry]:
    """The committed registry models with their first eval samples; expected outputs from onnxruntime."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT))
    from models.registry import REFERENCE_MODELS

    entries = []
    for name, ref in sorted(REFERENCE_MODELS.items()):
        key = f"registry_{name}"
        if not ref.committed or (names is not None and key not in names):
            continue
        model_path, _, eval_path = ref.build(ref.default_dir), None, ref.data(ref.default_dir)[1]
        folder = corpus_dir() / "registry" / name
        data = folder / "test_data_set_0"
        if not (data / "output_0.pb").exists():
            data.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model_path, folder / "model.onnx")
            model = onnx.load(str(model_path))
            arrays = np.load(eval_path)
            feeds = {i.name: arrays[i.name][:samples] for i in model.graph.input}
            session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
            outputs = session.run(None, feeds)
            for j, info in enumerate(model.graph.input):
                (data / f"input_{j}.pb").write_bytes(numpy_helper.from_array(feeds[info.name], info.name).SerializeToString())
            for j, (info, value) in enumerate(zip(model.graph.output, outputs)):
                (data / f"output_{j}.pb").write_bytes(numpy_helper.from_array(value, info.name).SerializeToString())
        entries.append(Entry(key, str(folder), 1e-4, 1e-5))
    return entries


def load_entries(fast: bool = False, only: str | None = None) -> list[Entry]:
    names = set(FAST_SUBSET) if fast else None
    entries = node_entries(names) + registry_entries(names)
    if only:
        pattern = re.compile(only)
        entries = [e for e in entries if pattern.search(e.name)]
    return entries


# ---------------------------------------------------------------------------------------------- one run


def _read_data(folder: Path, model) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    from onnx import TensorProto, numpy_helper

    data = folder / "test_data_set_0"
    inputs, outputs = {}, []
    weights = {t.name for t in model.graph.initializer}  # IR 3 lists them among the inputs too
    for j, info in enumerate(i for i in model.graph.input if i.name not in weights):
        tensor = TensorProto()
        tensor.ParseFromString((data / f"input_{j}.pb").read_bytes())
        inputs[info.name] = numpy_helper.to_array(tensor)
    for j in range(len(model.graph.output)):
        tensor = TensorProto()
        tensor.ParseFromString((data / f"output_{j}.pb").read_bytes())
        outputs.append(numpy_helper.to_array(tensor))
    return inputs, outputs


def _ort_run(proto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    types = {"tensor(float16)": np.float16, "tensor(float)": np.float32, "tensor(double)": np.float64}
    cast = {i.name: types[i.type] for i in session.get_inputs() if i.type in types}
    feeds = {k: v.astype(cast[k]) if k in cast and v.dtype.kind == "f" else v for k, v in feeds.items()}
    return session.run(None, feeds)


def compare(expected: list[np.ndarray], actual: list[np.ndarray], rtol: float, atol: float,
            min_cosine: float | None = None) -> str | None:
    """``None`` when every output is within tolerance (module docstring), else what differs; with
    ``min_cosine`` float outputs are judged by cosine similarity instead of ``rtol``."""
    from graphopt.verify import mean_cosine

    if len(expected) != len(actual):
        return f"{len(actual)} outputs, expected {len(expected)}"
    for j, (want, got) in enumerate(zip(expected, actual)):
        want, got = np.asarray(want), np.asarray(got)
        if want.shape != got.shape:
            return f"output {j}: shape {got.shape}, expected {want.shape}"
        if want.dtype.kind not in "fc" or want.size == 0:
            if want.size and not np.array_equal(want, got.astype(want.dtype)):
                return f"output {j}: {int(np.sum(want != got))} of {want.size} values differ"
            continue
        w, g = want.astype(np.float64), got.astype(np.float64)
        finite = np.isfinite(w)
        if not np.array_equal(np.isnan(w), np.isnan(g)) or not np.array_equal(w[~finite & ~np.isnan(w)],
                                                                                g[~finite & ~np.isnan(w)]):
            return f"output {j}: non-finite values differ"
        if not np.all(np.isfinite(g[finite])):
            return f"output {j}: non-finite where finite expected"
        if finite.any() and min_cosine is not None:
            cosine = mean_cosine(w[finite][None], g[finite][None])  # one sample: the whole output
            if cosine < min_cosine:
                return f"output {j}: cosine {cosine:.4f} < {min_cosine}"
        elif finite.any():
            error = float(np.max(np.abs(w[finite] - g[finite])))
            scale = float(np.max(np.abs(w[finite])))
            if error > atol + rtol * scale:
                return f"output {j}: max |Δ| {error:.3g} over max |expected| {scale:.3g}"
    return None


def original_problem(entry: Entry) -> str | None:
    """Why the original model cannot be judged here (``not counted``), or ``None``."""
    import onnx

    folder = Path(entry.folder)
    model = onnx.load(str(folder / "model.onnx"))
    inputs, expected = _read_data(folder, model)
    try:
        outputs = _ort_run(model, inputs)
    except Exception as exc:
        try:  # an old model whose ops have no kernel at its opset any more: runs after the upgrade
            import onnx_ir as ir

            from graphopt.opset_upgrade import DEFAULT_OPSET, upgrade

            outputs = _ort_run(ir.to_proto(upgrade(ir.from_proto(model), DEFAULT_OPSET).model), inputs)
        except Exception:
            return "onnxruntime cannot run the original: " + _first(exc)
    differs = compare(expected, outputs, max(entry.rtol, 1e-4), max(entry.atol, 1e-6))
    return f"onnxruntime's outputs on the original differ from the expected ({differs})" if differs else None


def _first(exc: BaseException | str) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def run_one(entry: Entry, pass_name: str, eval_data: bool = True) -> Run:
    """Run ``graphopt optimize`` on ``entry`` for ``pass_name`` in this process and judge it; without
    ``eval_data`` graphopt compares on its own probe inputs (as for a user who has no data)."""
    started = time.perf_counter()
    problem = original_problem(entry)
    if problem:
        return Run(entry.name, pass_name, "not counted", problem, time.perf_counter() - started)
    import onnx
    from click.testing import CliRunner

    from graphopt.cli import main

    with tempfile.TemporaryDirectory(prefix="corpus-") as tmp:
        work = Path(tmp)
        model_path = work / "model.onnx"
        shutil.copyfile(Path(entry.folder) / "model.onnx", model_path)
        out = work / "out.onnx"
        original = onnx.load(str(model_path))
        inputs, _ = _read_data(Path(entry.folder), original)
        data_path = work / "inputs.npz"
        np.savez(data_path, **inputs)
        data_args = ["--eval-data", str(data_path)] if inputs and eval_data else []  # no inputs: none to give
        args = ["optimize", str(model_path), "-o", str(out), "--no-cache", *data_args, *PASS_ARGS[pass_name]]
        env = {"GRAPHOPT_LATENCY_BUDGET": "0", "COLUMNS": "160"}
        result = CliRunner().invoke(main, args, env=env, catch_exceptions=True)
        stderr = result.stderr
        run = _judge(entry, pass_name, result, stderr, work, (model_path, data_path), out)
    run.seconds = time.perf_counter() - started
    return run


def _judge(entry: Entry, pass_name: str, result, stderr: str, work: Path, given: tuple[Path, ...], out: Path) -> Run:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "internal error:"))]
    fail = lambda kind, why: Run(entry.name, pass_name, "FAILURE", kind, detail={"why": why[:400]})  # noqa: E731
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        return fail("traceback", f"{type(result.exception).__name__}: {_first(result.exception)}")
    if "Traceback (most recent call last)" in stderr:
        return fail("traceback", stderr[-400:])
    if any(line.startswith("internal error:") for line in errors):
        return fail("internal error", errors[0])
    leftovers = sorted(p.name for p in work.iterdir() if p not in given)
    if result.exit_code in (1, 2):
        if leftovers:
            return fail("output left on failure", ", ".join(leftovers))
        if len(errors) != 1:
            return fail("not one error line", " | ".join(lines[-3:]))
        return Run(entry.name, pass_name, "refused", errors[0][len("error:"):].strip())
    if result.exit_code != 0:
        return fail(f"exit {result.exit_code}", " | ".join(lines[-3:]))
    if not out.exists():
        return fail("no output written", " | ".join(lines[-3:]))
    return _judge_output(entry, pass_name, out)


def _judge_output(entry: Entry, pass_name: str, out: Path) -> Run:
    import onnx

    try:
        onnx.checker.check_model(str(out), full_check=True)
    except Exception as exc:
        try:  # onnx's own strict check may reject the original too (a function body it cannot infer)
            onnx.checker.check_model(str(Path(entry.folder) / "model.onnx"), full_check=True)
            strict_original = True
        except Exception:
            strict_original = False
        try:
            if strict_original:
                raise exc
            onnx.checker.check_model(str(out))
        except Exception as invalid:
            return Run(entry.name, pass_name, "FAILURE", "invalid model written", detail={"why": _first(invalid)})
    model = onnx.load(str(out))
    original = onnx.load(str(Path(entry.folder) / "model.onnx"))
    inputs, expected = _read_data(Path(entry.folder), original)
    runnable = model
    if pass_name == "fp16":
        from graphopt.passes.fp16.verify import emulation_copy

        runnable, _ = emulation_copy(model, onnx.TensorProto.FLOAT16)
    try:
        outputs = _ort_run(runnable, inputs)
    except Exception as exc:
        return Run(entry.name, pass_name, "FAILURE", "written model does not run", detail={"why": _first(exc)})
    if pass_name == "int8":
        differs = compare(expected, outputs, entry.rtol, entry.atol, min_cosine=INT8_MIN_COSINE)
    else:
        rtol, atol = TOLERANCE[pass_name]
        differs = compare(expected, outputs, max(rtol, entry.rtol), max(atol, entry.atol))
    if differs:
        return Run(entry.name, pass_name, "FAILURE", "out of tolerance", detail={"why": differs})
    return Run(entry.name, pass_name, "valid")


# ---------------------------------------------------------------------------------------------- workers


def worker_main() -> None:
    """``--worker``: read ``[entry, pass]`` JSON lines on stdin, answer one JSON ``Run`` per line."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)  # onnxruntime's native log lines
    sys.path.insert(0, str(ROOT))
    for line in sys.stdin:
        entry_dict, pass_name, eval_data = json.loads(line)
        entry = Entry(**entry_dict)
        try:
            run = run_one(entry, pass_name, eval_data)
        except BaseException as exc:  # a failure of the harness around the CLI, reported as such
            run = Run(entry.name, pass_name, "FAILURE", "harness error", detail={"why": f"{type(exc).__name__}: {_first(exc)}"})
        channel.write(json.dumps(asdict(run)) + "\n")


class Worker:
    """One ``--worker`` process; replaced when it dies or times out."""

    def __init__(self) -> None:
        env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
        self.process = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=ROOT,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                        text=True, bufsize=1, env=env)

    def run(self, entry: Entry, pass_name: str, timeout: float, eval_data: bool = True) -> Run:
        started = time.perf_counter()
        answer: list[str] = []
        try:
            self.process.stdin.write(json.dumps([asdict(entry), pass_name, eval_data]) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            pass
        reader = threading.Thread(target=lambda: answer.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        seconds = time.perf_counter() - started
        if answer and answer[0]:
            return Run(**json.loads(answer[0]))
        kind = "timeout" if reader.is_alive() else f"process died ({self.process.poll()})"
        self.kill()
        return Run(entry.name, pass_name, "FAILURE", kind, seconds, {"why": f"after {seconds:.0f} s"})

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def run_all(entries: list[Entry], passes: list[str], jobs: int, timeout: float, progress: bool = True,
            eval_data: bool = True) -> list[Run]:
    tasks = collections.deque((e, p) for e in entries for p in passes)
    total, runs, lock = len(tasks), [], threading.Lock()

    def loop() -> None:
        worker = Worker()
        while True:
            with lock:
                if not tasks:
                    break
                entry, pass_name = tasks.popleft()
            if not worker.alive:
                worker = Worker()
            run = worker.run(entry, pass_name, timeout, eval_data)
            with lock:
                runs.append(run)
                if progress:
                    mark = "" if run.status in ("valid", "not counted") else f" {run.status}: {run.reason[:90]}"
                    print(f"[{len(runs)}/{total}] {run.name} {run.pass_name} {run.seconds:.1f}s{mark}",
                          file=sys.stderr, flush=True)
        worker.kill()

    threads = [threading.Thread(target=loop) for _ in range(max(1, jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(runs, key=lambda r: (r.name, PASSES.index(r.pass_name)))


# ---------------------------------------------------------------------------------------------- summary


def reason_class(message: str) -> str:
    """A refusal message without its model-specific parts (names, numbers, paths), for counting."""
    text = re.sub(r"(?:(?<=\s)|^)/\S+", "PATH", message)
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", "N", text)
    text = re.sub(r"\([^()]*\)", lambda m: m.group(0) if re.fullmatch(r"\([A-Z][A-Za-z0-9]*\)", m.group(0)) else "(…)", text)
    return text[:110]


def summarize(runs: list[Run], passes: list[str]) -> dict:
    summary: dict = {"passes": {}, "refusals": {}, "failures": [], "not_counted": {}}
    for p in passes:
        mine = [r for r in runs if r.pass_name == p]
        counts = collections.Counter(r.status for r in mine)
        counted = len(mine) - counts["not counted"]
        summary["passes"][p] = {
            "models": len(mine), "not counted": counts["not counted"], "counted": counted,
            "valid": counts["valid"], "refused": counts["refused"], "FAILURE": counts["FAILURE"],
            "valid %": round(100.0 * counts["valid"] / counted, 1) if counted else 0.0,
        }
        summary["refusals"][p] = collections.Counter(reason_class(r.reason) for r in mine
                                                     if r.status == "refused").most_common()
        summary["not_counted"][p] = collections.Counter(reason_class(r.reason)[:60] for r in mine
                                                        if r.status == "not counted").most_common(8)
    summary["failures"] = [{"model": r.name, "pass": r.pass_name, "kind": r.reason, **r.detail}
                           for r in runs if r.status == "FAILURE"]
    return summary


def render(summary: dict, show_failures: int = 40, show_reasons: int = 12) -> str:
    lines = ["| pass | models | not counted | counted | valid | refused | FAILURE | valid % |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for p, s in summary["passes"].items():
        lines.append(f"| {p} | {s['models']} | {s['not counted']} | {s['counted']} | {s['valid']} | {s['refused']} "
                     f"| {s['FAILURE']} | {s['valid %']:.1f} |")
    for p, reasons in summary["refusals"].items():
        if reasons:
            lines += ["", f"{p}: refusal reasons (counted)"]
            lines += [f"  {n:4d}  {reason}" for reason, n in reasons[:show_reasons]]
            if len(reasons) > show_reasons:
                lines.append(f"  {sum(n for _, n in reasons[show_reasons:]):4d}  ({len(reasons) - show_reasons} other reasons)")
    failures = summary["failures"]
    if failures:
        kinds = collections.Counter(f"{f['pass']}: {f['kind']}" for f in failures)
        lines += ["", f"FAILURES: {len(failures)}"] + [f"  {n:4d}  {k}" for k, n in kinds.most_common()]
        lines += [f"  {f['model']} [{f['pass']}] {f['kind']}: {f.get('why', '')[:160]}" for f in failures[:show_failures]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--only", help="Regular expression on model names.")
    parser.add_argument("--fast", action="store_true", help="Only the fixed fast subset (FAST_SUBSET).")
    parser.add_argument("--json", type=Path, help="Write every run and the summary here.")
    parser.add_argument("--timeout", type=float, default=180.0, help="Seconds one run may take.")
    parser.add_argument("--show-failures", type=int, default=60)
    parser.add_argument("--probe-inputs", action="store_true",
                        help="Give no --eval-data: graphopt compares on its own probe inputs (the written model is "
                             "still judged on the test inputs).")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main()
        return 0
    passes = [p.strip() for p in args.passes.split(",") if p.strip()]
    unknown = [p for p in passes if p not in PASSES]
    if unknown:
        parser.error(f"unknown pass(es) {unknown}; choose from {', '.join(PASSES)}")
    entries = load_entries(args.fast, args.only)
    print(f"{len(entries)} float models × {len(passes)} passes, {args.jobs} jobs", file=sys.stderr)
    started = time.perf_counter()
    runs = run_all(entries, passes, args.jobs, args.timeout, eval_data=not args.probe_inputs)
    summary = summarize(runs, passes)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(render(summary, args.show_failures))
    print(f"\n{len(runs)} runs in {summary['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "runs": [asdict(r) for r in runs]}, indent=1, default=str))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
