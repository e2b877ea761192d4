"""A scratch working directory for libraries that drop files into the current one.

onnxruntime's symbolic shape inference writes ``sym_shape_infer_temp.onnx`` (+ a GB-sized data
file) into the current directory when it cannot infer every shape; the quantization tools write
augmented models there too. Such calls run inside :func:`scratch_cwd` so a user's folder never
collects leftovers.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def scratch_cwd() -> Iterator[Path]:
    """Run the body with a fresh temporary directory as the working directory, then delete it."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="graphopt-") as folder:
        os.chdir(folder)
        try:
            yield Path(folder)
        finally:
            os.chdir(previous)
