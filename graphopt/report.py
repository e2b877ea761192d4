"""The run report: one rich table for people, the same content as JSON for machines."""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from rich.console import Console
from rich.table import Table


@dataclasses.dataclass
class PassRow:
    """What one pass did."""

    name: str
    status: str
    """``applied``, ``unchanged``, ``rolled back`` or ``skipped``."""
    seconds: float = 0.0
    nodes_before: int = 0
    nodes_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    cache_hit: bool = False
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)
    metric: dict[str, Any] | None = None
    metric_summary: str = ""


@dataclasses.dataclass
class Report:
    input_path: str | None
    output_path: str | None
    input_hash: str
    output_hash: str | None
    versions: dict[str, str]
    target: dict[str, Any]
    rows: list[PassRow] = dataclasses.field(default_factory=list)
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    size_before: int = 0
    size_after: int = 0
    total_seconds: float = 0.0
    notes: list[str] = dataclasses.field(default_factory=list)
    warnings: list[str] = dataclasses.field(default_factory=list)
    quality_gate: dict[str, Any] | None = None
    eval_source: str | None = None
    metric: str = "auto"
    """The metric choice that judged the outputs (per-output kinds are in ``metrics_before``)."""
    latency: dict[str, Any] | None = None
    """Original vs optimized latency on this machine (:mod:`graphopt.profiling.speedup`), or why not measured."""
    engine: dict[str, Any] | None = None
    """The engine directory built at the end of the pipeline (``--engine``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write_json(self, path: str | os.PathLike) -> None:
        """Write the report atomically, with the mode a new file gets under the user's umask."""
        from graphopt.model_io import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2, default=str))

    def render(self, console: Console) -> None:
        table = Table(title=f"graphopt · target {self.target.get('kind')}", title_justify="left")
        for column, justify in (("pass", "left"), ("status", "left"), ("time", "right"), ("nodes", "right"),
                                ("weights", "right"), ("quality vs original", "left")):
            table.add_column(column, justify=justify, no_wrap=column != "quality vs original")
        table.add_column("details", overflow="fold", ratio=1)
        for row in self.rows:
            details = ", ".join(f"{k}={_short(v)}" for k, v in row.stats.items() if not _is_table(v))
            if row.notes:
                details = "; ".join(filter(None, [details, *row.notes]))
            status = row.status + (" (cached)" if row.cache_hit else "")
            table.add_row(row.name, status, f"{row.seconds:.2f}s", f"{row.nodes_before}→{row.nodes_after}",
                          f"{_mb(row.bytes_before)}→{_mb(row.bytes_after)}", row.metric_summary or "–", details)
        quality = "–"
        if self.metrics_after:
            quality = self.metrics_after.get("summary", "–")
        table.caption = (
            f"size {_mb(self.size_before)} → {_mb(self.size_after)} · {quality} · "
            f"{self.total_seconds:.2f}s total" + (f" · eval on {self.eval_source}" if self.eval_source else "")
        )
        console.print(table)
        for row in self.rows:
            for key, value in row.stats.items():
                if _is_table(value):
                    _render_rows(console, f"{row.name}: {key.replace('_', ' ')}", value)
        _render_latency_and_engine(console, self.latency, self.engine)
        for note in self.notes:
            console.print(f"[dim]note:[/dim] {note}")
        for warning in self.warnings:
            console.print(f"[yellow]warning:[/yellow] {warning}")


def _render_latency_and_engine(console: Console, latency: dict[str, Any] | None, engine: dict[str, Any] | None) -> None:
    if latency:
        from graphopt.profiling.render import latency_table

        table = latency_table(latency)
        if table is not None:
            console.print(table)
        else:
            console.print(f"[dim]latency not measured:[/dim] {latency.get('reason', 'skipped')}")
    if engine:
        console.print(f"engine: {engine['engine']} for target {engine['target']} in {engine['dir']} "
                      f"(runs on {', '.join(engine['providers'])})")


MAX_DETAIL_ROWS = 40


def _is_table(value: Any) -> bool:
    """A stats entry that is a list of row dicts (e.g. prune's per-group rows) gets its own table."""
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) for item in value)


def _render_rows(console: Console, title: str, rows: list[dict[str, Any]]) -> None:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    table = Table(title=title, title_justify="left", title_style="bold", show_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows[:MAX_DETAIL_ROWS]:
        table.add_row(*(_short(row.get(column, "")) for column in columns))
    if len(rows) > MAX_DETAIL_ROWS:
        table.caption = f"… {len(rows) - MAX_DETAIL_ROWS} more rows in the JSON report"
    console.print(table)


def _mb(size: int) -> str:
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / 1024 / 1024:.2f} MB"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and len(value) > 4:
        return f"[{len(value)} items]"
    return str(value)
