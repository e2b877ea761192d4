"""Callables that run an engine once on fixed inputs, for the interleaved timer.

* onnxruntime on CPU: ``host`` = ``session.run`` on numpy feeds.
* onnxruntime on a GPU provider: ``host`` = ``session.run`` on numpy feeds (host→device copies of the
  inputs and device→host copies of the outputs included); ``device`` = IO binding with the inputs
  uploaded once to device ``OrtValue`` s and the outputs left on the device — the model's time alone.
* TensorRT: :meth:`graphopt.engines.trt.TrtEngine.timed_runners` (same two modes, own device buffers).

Every runner returns only when the GPU work is done, so the timer reads finished work: ``session.run``
copies the outputs back; ``run_with_iobinding`` synchronizes the providers' streams before returning
(onnxruntime's run option ``disable_synchronize_execution_providers`` is ``"0"`` unless set, and it is
never set here); the TensorRT runners synchronize their stream.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from graphopt.engines.load import OpenedEngine

HOST, DEVICE = "host", "device"


def timed_runners(engine: OpenedEngine, feeds: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    """``{mode: callable}`` for ``engine`` on ``feeds`` (``device`` only on a GPU)."""
    if engine.kind == "trt":
        return engine.runner.timed_runners(feeds)
    session = engine.runner.session
    runners: dict[str, Callable[[], object]] = {HOST: lambda: session.run(None, feeds)}
    if engine.on_gpu:
        runners[DEVICE] = _io_binding_runner(session, feeds)
    return runners


def _io_binding_runner(session, feeds: dict[str, np.ndarray]) -> Callable[[], object]:
    import onnxruntime as ort

    binding = session.io_binding()
    keep = []
    for name, array in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), "cuda", 0)
        keep.append(value)
        binding.bind_ortvalue_input(name, value)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cuda", 0)
    session.run_with_iobinding(binding)

    def run() -> None:
        session.run_with_iobinding(binding)
        _ = keep  # the device inputs live as long as the runner

    return run
