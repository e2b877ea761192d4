"""Keep native libraries' terminal output out of graphopt's own.

onnxruntime prints an "EP Error" banner on stdout (from Python) and its C++ logger writes provider
load failures straight to file descriptor 2 when a requested execution provider cannot load;
TensorRT's builder may write to the descriptors too. :func:`captured_output` sends descriptors 1 and 2
(and ``sys.stdout`` / ``sys.stderr``) to a temporary file for the duration of the block and hands the
lines back, so callers log one line instead and can quote the reason.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class CapturedOutput:
    """Lines written while capturing, ANSI colour codes removed."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@contextlib.contextmanager
def captured_output() -> Iterator[CapturedOutput]:
    """Capture everything written to stdout/stderr, Python- and C-level, inside the block."""
    captured = CapturedOutput()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[int] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        python_out, python_err = io.StringIO(), io.StringIO()
        try:
            for fd in (1, 2):
                try:
                    saved.append(os.dup(fd))
                except OSError:  # descriptor closed (daemon, some test runners): nothing to redirect
                    saved.append(-1)
                    continue
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(python_out), contextlib.redirect_stderr(python_err):
                yield captured
        finally:
            for fd, copy in zip((1, 2), saved):
                if copy >= 0:
                    os.dup2(copy, fd)
                    os.close(copy)
            sink.seek(0)
            native = sink.read().decode(errors="replace")
            for text in (python_out.getvalue(), python_err.getvalue(), native):
                captured.lines.extend(_ANSI.sub("", line).rstrip() for line in text.splitlines() if line.strip())
