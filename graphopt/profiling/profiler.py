"""``graphopt profile``: time engines interleaved, summarise, and compare them to the first one.

Procedure for a list of models / engine directories:

1. open every engine (ONNX files on the requested provider with spin-waiting off, so the idle
   threads of one session do not steal the cores from the next; engine directories on their own
   target), recording the resident memory each one added (and the GPU memory, on a GPU);
2. for every batch size: build each engine's inputs (same values for all), make its runners
   (:mod:`graphopt.profiling.runners`: ``host`` always, ``device`` on a GPU) and time all runners of all
   engines interleaved in one run (:func:`graphopt.profiling.timing.interleaved_timings`);
3. summarise each runner's per-iteration timings (:mod:`graphopt.profiling.stats`) and divide its p50
   by the first engine's p50 for the same batch and mode.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from graphopt.data import DataSet, batch_axis
from graphopt.engines.load import OpenedEngine, open_engine
from graphopt.engines.shapes import Profile, check_profile
from graphopt.errors import InputError
from graphopt.profiling import memory
from graphopt.profiling.feeds import cast_to_inputs, make_feeds
from graphopt.profiling.runners import timed_runners
from graphopt.profiling.stats import LatencyStats, summarize
from graphopt.profiling.timing import interleaved_timings

DEFAULT_WARMUP = 10
DEFAULT_ITERATIONS = 100


def default_threads() -> int:
    """One intra-op thread per physical core this process may run on (onnxruntime's own rule)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        for name in ("core_cpus_list", "thread_siblings_list"):
            try:
                cores.add((topology / name).read_text().strip())
                break
            except OSError:
                continue
        else:
            cores.add(str(cpu))
    return max(1, len(cores))


@dataclasses.dataclass(frozen=True)
class ProfileOptions:
    """What ``graphopt profile`` measures (defaults: cpu, batch 1, 10 warm-up, 100 iterations)."""

    provider: str | None = None
    """For ONNX files: ``cpu`` / ``cuda`` / ``trt`` (engine directories run on their own target)."""
    batches: tuple[int, ...] | None = None
    """``None``: the models' fixed batch, else 1."""
    shapes: Profile | None = None
    warmup: int = DEFAULT_WARMUP
    iterations: int | None = None
    seconds: float | None = None
    threads: int | None = None
    """Intra-op threads of onnxruntime CPU sessions; ``None``: :func:`default_threads`."""
    allow_fallback: bool = False
    min_sample_s: float = 0.0

    def __post_init__(self) -> None:
        if self.iterations is not None and self.seconds is not None:
            raise InputError("give --iters or --seconds, not both")
        if self.iterations is not None and self.iterations < 1:
            raise InputError(f"--iters must be ≥ 1, got {self.iterations}")
        if self.seconds is not None and self.seconds <= 0:
            raise InputError(f"--seconds must be > 0, got {self.seconds}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be ≥ 0, got {self.warmup}")
        if self.batches is not None and (not self.batches or min(self.batches) < 1):
            raise InputError(f"batch sizes must be ≥ 1, got {list(self.batches)}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be ≥ 1, got {self.threads}")


@dataclasses.dataclass
class Measurement:
    """One engine, one batch size, one mode."""

    batch: int
    mode: str
    stats: LatencyStats
    ratio_p50: float
    samples_ms: list[float]

    def to_dict(self) -> dict[str, Any]:
        return {"batch": self.batch, "mode": self.mode, **self.stats.to_dict(), "ratio_p50": self.ratio_p50,
                "samples_ms": [round(v, 5) for v in self.samples_ms]}


@dataclasses.dataclass
class EngineProfile:
    label: str
    source: str
    kind: str
    requested: str
    providers: list[str]
    fallback_reason: str | None
    rss_added_bytes: int
    gpu_memory_bytes: int | None
    measurements: list[Measurement] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["measurements"] = [m.to_dict() for m in self.measurements]
        return data


@dataclasses.dataclass
class ProfileResult:
    engines: list[EngineProfile]
    batches: list[int]
    warmup: int
    iterations: int | None
    seconds: float | None
    rounds: dict[int, int]
    calls_per_sample: int
    threads: int
    peak_rss_bytes: int

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["engines"] = [e.to_dict() for e in self.engines]
        data["rounds"] = {str(k): v for k, v in self.rounds.items()}
        data["interleaved"] = True
        return data


def unique_labels(sources: Sequence[str | os.PathLike]) -> list[str]:
    labels: list[str] = []
    for source in sources:
        base = Path(source).name or str(source)
        label, n = base, 2
        while label in labels:
            label, n = f"{base}#{n}", n + 1
        labels.append(label)
    return labels


def open_engines(sources: Sequence[str | os.PathLike], options: ProfileOptions, threads: int
                 ) -> list[tuple[OpenedEngine, int, int | None]]:
    """Open every source; returns ``(engine, resident bytes added, GPU bytes added)`` per source."""
    from graphopt.engines.ort import build, probe_model

    build(probe_model())  # onnxruntime's own start-up memory is not charged to the first engine
    opened = []
    for source, label in zip(sources, unique_labels(sources)):
        rss_before, gpu_before = memory.rss_bytes(), memory.gpu_memory_in_use()
        engine = open_engine(source, options.provider, threads=threads, allow_fallback=options.allow_fallback,
                             spinning=False, label=label)
        gpu_after = memory.gpu_memory_in_use()
        measured = engine.on_gpu and gpu_before is not None and gpu_after is not None
        gpu_added = gpu_after - gpu_before if measured else None  # a CPU engine on a GPU machine: not its memory
        opened.append((engine, memory.rss_bytes() - rss_before, gpu_added))
    return opened


def resolve_batches(engines: Sequence[OpenedEngine], requested: tuple[int, ...] | None) -> list[int]:
    """The batches to time: those requested, else the models' fixed batch, else 1 (also the only batch of
    a model whose inputs share no batch axis: one feed)."""
    fixed = {axis.size for axis in (batch_axis(engine.input_specs) for engine in engines) if axis.kind == "fixed"}
    if requested is None:
        if len(fixed) > 1:
            raise InputError(f"the models have different fixed batch sizes {sorted(fixed)}; they cannot be timed together")
        return [fixed.pop() if fixed else 1]
    return sorted(set(requested))


def profile_engines(sources: Sequence[str | os.PathLike], options: ProfileOptions = ProfileOptions(),
                    data: DataSet | None = None) -> ProfileResult:
    """Profile ``sources`` (ONNX files or engine directories) interleaved (see the module docstring)."""
    if not sources:
        raise InputError("give at least one model or engine directory to profile")
    threads = options.threads or default_threads()
    iterations = options.iterations if options.seconds is None else None
    if iterations is None and options.seconds is None:
        iterations = DEFAULT_ITERATIONS
    opened = open_engines(sources, options, threads)
    engines = [engine for engine, _, _ in opened]
    for engine in engines:
        check_profile(options.shapes or {}, engine.input_specs)
    if data is not None:  # laid out as the first model takes it; each engine casts floats to its own type
        data = data.check_against(engines[0].input_specs, "profiling", any_float=True)
    batches = resolve_batches(engines, options.batches)
    results = [EngineProfile(e.label, str(s), e.kind, e.requested, e.providers, e.fallback_reason, rss, gpu,
                             warnings=list(e.warnings)) for (e, rss, gpu), s in zip(opened, sources)]
    rounds: dict[int, int] = {}
    calls = 1
    for batch in batches:
        runners = {}
        for index, engine in enumerate(engines):
            specs = engine.input_specs
            profile = {**engine.profile, **(options.shapes or {})}
            feeds = cast_to_inputs(make_feeds(specs, batch, profile, data), specs)
            engine.run(feeds)  # checks shapes against the engine's profile, allocates outputs once
            for mode, runner in timed_runners(engine, feeds).items():
                runners[(index, mode)] = runner
        keyed = {f"{index}|{mode}": runner for (index, mode), runner in runners.items()}
        timings = interleaved_timings(keyed, warmup=options.warmup, iterations=iterations, seconds=options.seconds,
                                      min_sample_s=options.min_sample_s)
        rounds[batch], calls = timings.rounds, timings.calls_per_sample
        first: dict[str, float] = {}
        for (index, mode) in runners:
            seconds = timings.seconds[f"{index}|{mode}"]
            stats = summarize(seconds, batch)
            first.setdefault(mode, stats.p50_ms)
            results[index].measurements.append(
                Measurement(batch, mode, stats, stats.p50_ms / first[mode], [1e3 * s for s in seconds]))
    return ProfileResult(results, batches, options.warmup, iterations, options.seconds, rounds, calls, threads,
                         memory.peak_rss_bytes())
