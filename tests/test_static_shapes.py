"""Models whose inputs do not share a batch axis: every static dim honoured, one feed per sample.

The models are built inline: ``two`` takes ``x (4, 16)`` and ``y (2, 8)`` — different static leading dims,
so axis 0 is no batch — and ``mm`` is ``A (8, 6) @ B (6, N)``. Numerics are compared with onnxruntime
running the original model.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt.cli import main
from graphopt.data import BatchAxis, DataSet, InputSpec, batch_axis, input_specs, load_data, probe_data
from graphopt.errors import InputError
from graphopt.passes.prune.probe import probe_feeds, second_feeds

RNG = np.random.default_rng(0)


def _model(nodes, inputs, outputs, inits=(), opset=17):
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def two_inputs() -> onnx.ModelProto:
    """out = Relu(x @ W + mean(y, axis 0)): x (4, 16), y (2, 8), W (16, 8)."""
    w = numpy_helper.from_array(RNG.standard_normal((16, 8)).astype(np.float32), "W")
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]),
             helper.make_node("ReduceMean", ["y"], ["m"], axes=[0], keepdims=1),
             helper.make_node("Add", ["h", "m"], ["s"]),
             helper.make_node("Relu", ["s"], ["out"])]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16]),
                          helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
                  [helper.make_tensor_value_info("out", TensorProto.FLOAT, [4, 8])], [w], opset=13)


def matmul_model() -> onnx.ModelProto:
    """Z = Relu(A @ B): A (8, 6) static, B (6, N)."""
    nodes = [helper.make_node("MatMul", ["A", "B"], ["Y"]), helper.make_node("Relu", ["Y"], ["Z"])]
    return _model(nodes, [helper.make_tensor_value_info("A", TensorProto.FLOAT, [8, 6]),
                          helper.make_tensor_value_info("B", TensorProto.FLOAT, [6, "N"])],
                  [helper.make_tensor_value_info("Z", TensorProto.FLOAT, [8, "N"])])


def _specs(model):
    import onnx_ir as ir

    return input_specs(ir.from_proto(model))


def _ort(model, feeds):
    return ort.InferenceSession(model.SerializeToString() if isinstance(model, onnx.ModelProto) else model,
                                providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _feeds(count=5):
    return [{"x": RNG.standard_normal((4, 16)).astype(np.float32), "y": RNG.standard_normal((2, 8)).astype(np.float32)}
            for _ in range(count)]


def test_batch_axis_rule():
    f = np.dtype(np.float32)
    assert batch_axis([InputSpec("a", f, ("N", 3)), InputSpec("b", f, ("N", 5))]) == BatchAxis("dynamic", name="N")
    assert batch_axis([InputSpec("a", f, (None, 3)), InputSpec("b", f, (None,))]) == BatchAxis("dynamic")
    assert batch_axis([InputSpec("a", f, (1, 3)), InputSpec("b", f, (1, 5))]) == BatchAxis("fixed", size=1)
    for shapes in [((8, 6), (6, "N")), (("N", 3), ("M", 3)), (("N", 3), (None, 3)), (("N", 3), ())]:
        assert batch_axis([InputSpec("a", f, shapes[0]), InputSpec("b", f, shapes[1])]).kind == "none", shapes


def test_probe_data_honours_static_dims_and_shares_named_dims():
    data = probe_data(_specs(matmul_model()), count=3)
    assert data.stacked and data.inputs["A"].shape == (3, 8, 6) and data.inputs["B"].shape == (3, 6, 16)
    feeds = list(data.batches(16))
    assert len(feeds) == 3 and feeds[0]["A"].shape == (8, 6)
    data.check_against(_specs(matmul_model()), "probe")
    f = np.dtype(np.float32)
    # "H" is a float rank-4 dim (64) in the image and a rank-3 int dim (16) in the mask: one size for both
    specs = [InputSpec("image", f, ("N", 3, "H", "W")), InputSpec("mask", np.dtype(np.int64), ("N", "H", "W"))]
    probe = probe_data(specs, count=2)
    assert probe.inputs["image"].shape[2:] == probe.inputs["mask"].shape[1:]


def test_npz_forms_for_inputs_without_a_batch_axis(tmp_path):
    specs = _specs(two_inputs())
    feeds = _feeds(3)
    np.savez(tmp_path / "one.npz", **feeds[0])  # the inputs themselves: one sample
    one = load_data(tmp_path / "one.npz").check_against(specs, "evaluation")
    assert one.stacked and len(one) == 1 and one.inputs["x"].shape == (1, 4, 16)
    np.savez(tmp_path / "many.npz", **{k: np.stack([f[k] for f in feeds]) for k in ("x", "y")})
    many = load_data(tmp_path / "many.npz").check_against(specs, "evaluation")
    assert many.stacked and len(many) == 3 and [f["y"].shape for f in many.batches(16)] == [(2, 8)] * 3


@pytest.mark.parametrize("arrays, message", [
    ({"x": np.zeros((4, 16)), "y": np.zeros((3, 8))}, "input 'y' of shape (3, 8) per sample but the model expects (2, 8)"),
    ({"x": np.zeros((5, 4, 16)), "y": np.zeros((5, 2, 9))}, "input 'y' of shape (2, 9) per sample but the model expects (2, 8)"),
    ({"x": np.zeros((4, 16)), "y": np.zeros((5, 2, 8))}, "share no batch axis (leading dims x 4, y 2)"),
    ({"x": np.zeros((5, 4, 16)), "y": np.zeros((4, 2, 8))}, "disagree on the number of samples"),
])
def test_data_that_misses_the_static_dims_is_refused_in_one_line(tmp_path, arrays, message):
    path = tmp_path / "d.npz"
    np.savez(path, **{k: v.astype(np.float32) for k, v in arrays.items()})
    onnx.save(two_inputs(), str(tmp_path / "two.onnx"))
    with pytest.raises(InputError, match=None) as caught:
        load_data(path).check_against(_specs(two_inputs()), "calibration")
    assert message in str(caught.value) and "\n" not in str(caught.value)
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "two.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--eval-data", str(path), "--no-cache"])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_fixed_batch_data_must_be_a_multiple_and_named_dims_agree():
    f = np.dtype(np.float32)
    with pytest.raises(InputError, match="takes exactly 4 at a time"):
        DataSet({"x": np.zeros((6, 3), np.float32)}).check_against([InputSpec("x", f, (4, 3))], "evaluation")
    specs = [InputSpec("ids", f, ("N", "S")), InputSpec("mask", f, ("N", "S"))]
    with pytest.raises(InputError, match=r"input 'mask' with dim 1 \(S\) = 5, but input 'ids' has S = 4"):
        DataSet({"ids": np.zeros((2, 4), np.float32), "mask": np.zeros((2, 5), np.float32)}).check_against(specs, "eval")


@pytest.mark.parametrize("flags", [[], ["--fp16"], ["--int8", "--calib-random"]], ids=["simplify", "fp16", "int8"])
def test_different_static_leading_dims_through_the_passes(tmp_path, flags):
    model = two_inputs()
    onnx.save(model, str(tmp_path / "two.onnx"))
    out = tmp_path / "two.opt.onnx"
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "two.onnx"), "-o", str(out), "--no-cache",
                                       "--target", "cpu", *flags])
    assert result.exit_code == 0, result.output
    onnx.checker.check_model(onnx.load(str(out)))
    tolerance = {"--fp16": 2e-2, "--int8": 0.25}.get(flags[0] if flags else "", 1e-5)
    for feeds in _feeds(4):
        want, got = _ort(model, feeds), _ort(str(out), feeds)
        assert got.shape == (4, 8)
        np.testing.assert_allclose(got, want, atol=tolerance * max(1.0, float(np.abs(want).max())))


def test_eval_data_without_a_batch_axis_is_compared_feed_by_feed(tmp_path):
    feeds = _feeds(3)
    np.savez(tmp_path / "eval.npz", **{k: np.stack([f[k] for f in feeds]) for k in ("x", "y")})
    result = graphopt.optimize(two_inputs(), tmp_path / "o.onnx", fp16=True, eval_data=tmp_path / "eval.npz",
                               target="cpu", cache=False, latency_budget=0)
    assert result.passed and result.report.eval_source.endswith("eval.npz")
    assert result.report.metrics_after["summary"]


def test_matmul_with_a_static_and_a_dynamic_operand(tmp_path):
    model = matmul_model()
    onnx.save(model, str(tmp_path / "mm.onnx"))
    for flags in ([], ["--fp16"]):
        result = CliRunner().invoke(main, ["optimize", str(tmp_path / "mm.onnx"), "-o", str(tmp_path / "o.onnx"),
                                           "--no-cache", "--target", "cpu", *flags])
        assert result.exit_code == 0, result.output
        a, b = RNG.standard_normal((8, 6)).astype(np.float32), RNG.standard_normal((6, 3)).astype(np.float32)
        np.testing.assert_allclose(_ort(str(tmp_path / "o.onnx"), {"A": a, "B": b}), _ort(model, {"A": a, "B": b}),
                                   atol=2e-2)


def test_profile_and_compare_without_a_batch_axis(tmp_path):
    model = two_inputs()
    onnx.save(model, str(tmp_path / "two.onnx"))
    assert CliRunner().invoke(main, ["optimize", str(tmp_path / "two.onnx"), "-o", str(tmp_path / "fp16.onnx"),
                                     "--fp16", "--no-cache", "--target", "cpu"]).exit_code == 0
    feeds = _feeds(3)
    np.savez(tmp_path / "d.npz", **{k: np.stack([f[k] for f in feeds]) for k in ("x", "y")})
    runner = CliRunner()
    profiled = runner.invoke(main, ["profile", str(tmp_path / "two.onnx"), str(tmp_path / "fp16.onnx"),
                                    "--iters", "3", "--json", str(tmp_path / "p.json")])
    assert profiled.exit_code == 0, profiled.output
    assert json.loads((tmp_path / "p.json").read_text())["batches"] == [1]
    with_data = runner.invoke(main, ["profile", str(tmp_path / "two.onnx"), "--iters", "3", "--data",
                                     str(tmp_path / "d.npz")])
    assert with_data.exit_code == 0, with_data.output
    bigger = runner.invoke(main, ["profile", str(tmp_path / "two.onnx"), "--iters", "3", "--batch", "4"])
    assert bigger.exit_code == 2 and "share no batch axis" in bigger.output
    compared = runner.invoke(main, ["compare", str(tmp_path / "two.onnx"), str(tmp_path / "fp16.onnx"), "--data",
                                    str(tmp_path / "d.npz"), "--rtol", "1e-2", "--atol", "1e-2", "--json",
                                    str(tmp_path / "c.json")])
    assert compared.exit_code == 0, compared.output
    assert json.loads((tmp_path / "c.json").read_text())["samples"] == 3


def test_prune_probe_feeds_keep_static_dims():
    import onnx_ir as ir

    model = ir.from_proto(matmul_model())
    feeds = probe_feeds(model)
    assert feeds["A"].shape == (8, 6) and feeds["B"].shape == (6, 16)
    grown = second_feeds(model, feeds)
    assert grown["A"].shape == (8, 6) and grown["B"].shape == (6, 24)


def test_distill_refuses_a_model_without_a_batch_axis(tmp_path):
    pytest.importorskip("torch", reason="distillation needs torch (pip install 'graphopt[distill]')")
    onnx.save(two_inputs(), str(tmp_path / "two.onnx"))
    onnx.save(two_inputs(), str(tmp_path / "student.onnx"))
    for name, count in (("train", 6), ("eval", 3)):
        feeds = _feeds(count)
        np.savez(tmp_path / f"{name}.npz", **{k: np.stack([f[k] for f in feeds]) for k in ("x", "y")})
    result = CliRunner().invoke(main, ["optimize", str(tmp_path / "two.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--distill", "--train-data", str(tmp_path / "train.npz"), "--eval-data",
                                       str(tmp_path / "eval.npz"), "--student", str(tmp_path / "student.onnx"), "--no-cache",
                                       "--target", "cpu"])
    assert result.exit_code != 0 and "share no batch axis (leading dims x 4, y 2)" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o.onnx").exists()


def test_scalar_and_unranked_inputs():
    # a scalar input: no shared batch axis; a file of the inputs themselves is one sample
    scaled = _model([helper.make_node("Mul", ["x", "k"], ["y"])],
                    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3]),
                     helper.make_tensor_value_info("k", TensorProto.FLOAT, [])],
                    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    data = DataSet({"x": x, "k": np.float32(2.0)}).check_against(_specs(scaled), "evaluation")
    assert data.stacked and len(data) == 1
    result = graphopt.optimize(scaled, fp16=True, eval_data=data, target="cpu", cache=False, latency_budget=0)
    assert result.passed and result.report.metrics_after is not None
    # an input whose rank the model does not declare keeps the old reading: samples along axis 0
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    specs = _specs(helper.make_model(graph))  # onnx's checker wants a shape; some exporters still omit it
    assert not specs[0].ranked and batch_axis(specs).kind == "dynamic"
    data = DataSet({"x": x}).check_against(specs, "evaluation")
    assert not data.stacked and len(data) == 5
