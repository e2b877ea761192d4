"""Terminal output: one stderr console, progress bars for long work, condensed library warnings.

Progress bars are shown only on an interactive terminal and when not silenced (``--json``/tests),
so piped output and CI logs stay clean.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

stderr = Console(stderr=True, highlight=False)
_progress_enabled = True


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for this process."""
    global _progress_enabled
    _progress_enabled = enabled


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate ``items`` under a progress bar (transient; only on a terminal)."""
    with progress_bar(description, total) as bar:
        for item in items:
            yield item
            bar.advance()


class WarningLog:
    """Counts warnings by a short key so a run prints one line per kind, not one per tensor."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, message: str, *, condense: bool = True) -> None:
        """Count ``message``; library messages are condensed to their per-tensor-free prefix,
        graphopt's own (``condense=False``) are kept whole."""
        self.counts[_condense(message) if condense else message] += 1

    def lines(self) -> list[str]:
        return [f"{msg} (×{n})" if n > 1 else msg for msg, n in self.counts.items()]


def _condense(message: str) -> str:
    """Drop the per-tensor part of a library message so repeats collapse into one key."""
    first = message.strip().splitlines()[0] if message.strip() else message
    for marker in (" for tensor", " of tensor", " in tensor", ": '", " node "):
        if marker in first:
            first = first.split(marker)[0]
    return first[:160]


@contextlib.contextmanager
def captured_warnings(log: WarningLog) -> Iterator[WarningLog]:
    """Capture Python warnings and library ``logging`` records into ``log`` instead of the terminal."""
    handler = _LogHandler(log)
    roots = [logging.getLogger(), logging.getLogger("onnxruntime"), logging.getLogger("onnx_ir")]
    previous = [(lg, lg.propagate, list(lg.handlers), lg.level) for lg in roots]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for lg in roots:
            lg.handlers = [handler]
            lg.propagate = False
            lg.setLevel(logging.WARNING)
        try:
            yield log
        finally:
            for lg, propagate, handlers, level in previous:
                lg.handlers, lg.propagate = handlers, propagate
                lg.setLevel(level)
            for item in caught:
                if not issubclass(item.category, DeprecationWarning):
                    log.add(str(item.message))


class _LogHandler(logging.Handler):
    def __init__(self, log: WarningLog) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.add(record.getMessage())


class ProgressBar:
    """A progress bar whose description can change (e.g. a training loss); silent off a terminal."""

    def __init__(self, progress: Progress | None, task: int | None) -> None:
        self._progress, self._task = progress, task

    def advance(self, steps: int = 1, description: str | None = None) -> None:
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, **({"description": description} if description else {}))


@contextlib.contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[ProgressBar]:
    """A transient progress bar on stderr (only on a terminal and when progress is on)."""
    if not (_progress_enabled and stderr.is_terminal):
        yield ProgressBar(None, None)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True) as progress:
        yield ProgressBar(progress, progress.add_task(description, total=total))
