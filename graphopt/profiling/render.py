"""Tables for people: the profile table and the latency rows of ``optimize``'s report."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from graphopt.profiling.profiler import ProfileResult


def _mb(value: int | None) -> str:
    return "–" if value is None else f"{value / 2**20:.1f}"


def profile_table(result: ProfileResult) -> Table:
    """One row per batch × engine (× mode on a GPU); ratios are p50 over the first engine's p50 at the same
    batch and mode. What ran each engine is in :func:`engines_table`."""
    budget = f"{result.seconds:g} s" if result.seconds is not None else f"{result.iterations} rounds"
    table = Table(title=f"graphopt profile · interleaved, {budget} per batch, warm-up {result.warmup}",
                  title_justify="left")
    gpu = any(m.mode == "device" for e in result.engines for m in e.measurements)
    columns = ["model", "batch", *(["mode"] if gpu else []), "p50 ms", "p90", "p95", "p99", "mean ± std", "min", "max",
               "samples/s", "× first"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("model", "mode") else "right")
    for batch in result.batches:
        for engine in result.engines:
            for m in engine.measurements:
                if m.batch != batch:
                    continue
                s = m.stats
                mode = ["device" if m.mode == "device" else "+copies"] if gpu else []
                table.add_row(engine.label, str(batch), *mode, f"{s.p50_ms:.3f}", f"{s.p90_ms:.3f}", f"{s.p95_ms:.3f}",
                              f"{s.p99_ms:.3f}", f"{s.mean_ms:.3f} ± {s.std_ms:.3f}", f"{s.min_ms:.3f}", f"{s.max_ms:.3f}",
                              f"{s.throughput:,.1f}", f"{m.ratio_p50:.3f}")
    rounds = ", ".join(f"batch {b}: {n}" for b, n in result.rounds.items())
    per_sample = "1 call" if result.calls_per_sample == 1 else f"{result.calls_per_sample} calls"
    table.caption = f"rounds: {rounds}; {per_sample} per sample"
    return table


def engines_table(result: ProfileResult) -> Table:
    """What really ran each engine, and the memory it took."""
    table = Table(title=f"engines · {result.threads} CPU threads · peak process RSS {_mb(result.peak_rss_bytes)} MB",
                  title_justify="left")
    for column in ("model", "asked", "ran on", "RSS +MB", "GPU +MB"):
        table.add_column(column, justify="right" if "MB" in column else "left", overflow="fold")
    for engine in result.engines:
        ran = ", ".join(engine.providers) + (" (fallback)" if engine.fallback_reason else "")
        table.add_row(engine.label, engine.requested, ran, _mb(engine.rss_added_bytes), _mb(engine.gpu_memory_bytes))
    return table


def latency_table(latency: dict[str, Any]) -> Table | None:
    """The original-vs-optimized latency rows of ``optimize``'s report, or ``None`` when not measured."""
    if not latency or not latency.get("measured"):
        return None
    providers = ", ".join(p.replace("ExecutionProvider", "") for p in latency["providers"])
    table = Table(title="latency: original vs optimized", title_justify="left",
                  caption=f"{providers}, {latency['threads']} threads, batch {latency['batch']}, interleaved "
                          f"for {latency['budget_s']:g} s ({latency['rounds']} rounds)")
    for column in ("model", "p50 ms", "p90 ms", "mean ms", "samples/s", "× original"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for name in ("original", "optimized"):
        s = latency[name]
        ratio = 1.0 if name == "original" else latency["ratio_p50"]
        table.add_row(name, f"{s['p50_ms']:.3f}", f"{s['p90_ms']:.3f}", f"{s['mean_ms']:.3f}", f"{s['throughput']:,.1f}",
                      f"{ratio:.3f}")
    return table
