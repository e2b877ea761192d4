"""``--plot PATH.png``: p50 latency against batch size, one line per engine (matplotlib, extra ``graphopt[plot]``)."""

from __future__ import annotations

from pathlib import Path

from graphopt.errors import InputError
from graphopt.model_io import atomic_target
from graphopt.profiling.profiler import ProfileResult

PLOT_EXTRA = "pip install 'graphopt[plot]'"


def require_matplotlib() -> None:
    """Fail before any timing when matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise InputError(f"--plot needs matplotlib, which is not installed: {PLOT_EXTRA}") from exc


def write_plot(result: ProfileResult, path: Path) -> Path:
    """Write the PNG atomically (temporary file beside it, then rename)."""
    require_matplotlib()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for engine in result.engines:
        for mode in dict.fromkeys(m.mode for m in engine.measurements):
            points = sorted((m.batch, m.stats.p50_ms) for m in engine.measurements if m.mode == mode)
            suffix = "" if len({m.mode for m in engine.measurements}) == 1 else f" ({mode})"
            axes.plot([b for b, _ in points], [v for _, v in points], marker="o", label=engine.label + suffix)
    axes.set_xlabel("batch size")
    axes.set_ylabel("p50 latency (ms)")
    if len(result.batches) > 1 and max(result.batches) / min(result.batches) >= 8:
        axes.set_xscale("log", base=2)
    axes.set_xticks(result.batches, [str(b) for b in result.batches])
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title("graphopt profile (interleaved)")
    figure.tight_layout()
    try:
        with atomic_target(path) as tmp:
            figure.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(figure)
    return path
