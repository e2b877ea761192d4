"""A student must take and return exactly what the teacher does (no torch needed)."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from graphopt.errors import InputError
from graphopt.passes.distill.student import check_student_io, weight_counts
from tests.conftest import conv_bn_model


def _identity(inputs, outputs) -> ir.Model:
    nodes = [helper.make_node("Identity", [inputs[0].name], [outputs[0].name])]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def _io(name, dims, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, dims)


TEACHER = _identity([_io("x", ["N", 3, 8])], [_io("y", ["N", 3, 8])])


def test_identical_interface_is_accepted():
    check_student_io(TEACHER, _identity([_io("x", ["batch", 3, 8])], [_io("y", ["batch", 3, 8])]))


@pytest.mark.parametrize("student, message", [
    (_identity([_io("input", ["N", 3, 8])], [_io("y", ["N", 3, 8])]), r"lacks 'x' and has extra 'input'"),
    (_identity([_io("x", ["N", 3, 8])], [_io("logits", ["N", 3, 8])]), r"student outputs do not match.*lacks 'y'"),
    (_identity([_io("x", ["N", 3, 8], TensorProto.FLOAT16)], [_io("y", ["N", 3, 8])]), r"input 'x' is float16 .* float"),
    (_identity([_io("x", ["N", 4, 8])], [_io("y", ["N", 3, 8])]), r"input 'x' has shape \(\?, 4, 8\) .* \(\?, 3, 8\)"),
    (_identity([_io("x", [1, 3, 8])], [_io("y", ["N", 3, 8])]), r"input 'x' has shape \(1, 3, 8\)"),
    (_identity([_io("x", ["N", 3])], [_io("y", ["N", 3, 8])]), r"input 'x' has shape"),
    (_identity([_io("x", ["N", 3, 8])], [_io("y", ["N", 3, 9])]), r"output 'y' has shape"),
])
def test_mismatched_student_is_refused(student, message):
    with pytest.raises(InputError, match=message):
        check_student_io(TEACHER, student)


def test_weight_counts_see_zeros():
    model = ir.from_proto(conv_bn_model())
    total, nonzero = weight_counts(model)
    assert total == nonzero == 4 * 9 + 4 * 5 + 10 * 256 + 10
    weight = model.graph.initializers["fc_w"].const_value.numpy().copy()
    weight[:, :128] = 0
    model.graph.initializers["fc_w"].const_value = ir.tensor(weight, name="fc_w")
    assert weight_counts(model) == (total, nonzero - 1280)


def test_the_pass_imports_without_torch_and_names_the_extra_when_torch_is_missing(tmp_path, monkeypatch):
    import subprocess
    import sys

    code = "import sys, graphopt.passes.distill, graphopt.cli_distill; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"

    from click.testing import CliRunner

    from graphopt.cli import main
    from graphopt.passes.distill import substitute

    monkeypatch.setattr(substitute, "torch_available", lambda: False)
    model = tmp_path / "m.onnx"
    import onnx

    onnx.save(conv_bn_model(), model)
    result = CliRunner().invoke(main, ["optimize", str(model), "--distill", "--student-width", "0.5", "--no-cache"])
    assert result.exit_code == 2
    assert "--distill needs PyTorch: pip install 'graphopt[distill]'" in result.output
