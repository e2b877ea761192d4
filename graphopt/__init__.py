"""graphopt: an ONNX graph optimizer and deployment converter.

Python API (the CLI builds exactly these objects)::

    import graphopt
    result = graphopt.optimize("model.onnx", output="model.opt.onnx", eval_data="eval.npz")
    print(result.report.rows)
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "optimize", "Pipeline", "load_model", "save_model", "load_data", "Target", "inspect_model"]


def __getattr__(name: str):
    # Lazy: `import graphopt` (and `graphopt --help`) stays fast.
    if name in ("optimize", "Pipeline", "OptimizeResult"):
        from graphopt import api

        return getattr(api, name)
    if name in ("load_model", "save_model"):
        from graphopt import model_io

        return getattr(model_io, name)
    if name == "load_data":
        from graphopt.data import load_data

        return load_data
    if name == "Target":
        from graphopt.target import Target

        return Target
    if name == "inspect_model":
        from graphopt.inspection import inspect_model

        return inspect_model
    raise AttributeError(f"module 'graphopt' has no attribute {name!r}")
