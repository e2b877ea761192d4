"""Knowledge distillation: a smaller student trained on the teacher's outputs replaces the teacher
when it stays within the accuracy budget.

One module per step: :mod:`.student` (where the student comes from, the I/O check),
:mod:`.teacher_outputs` (the teacher's outputs on the training data, streamed to disk and cached),
:mod:`.loss` (kd / cosine / mse and the per-output choice), :mod:`.torch_graph` (the student ONNX graph
as a trainable torch module), :mod:`.train` (the loop), :mod:`.export` (back to ONNX, verified), and
:mod:`.substitute`, the pass that runs them and decides the substitution. torch is imported only when
the pass runs.
"""

from graphopt.passes.distill.substitute import DistillOptions, DistillPass

__all__ = ["DistillOptions", "DistillPass"]
