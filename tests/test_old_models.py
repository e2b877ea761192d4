"""Old exports (opset 6, IR version 3) through every pass: upgraded only when a pass (or onnxruntime) needs
it, repaired where onnx's version converter trips, run at their own opset when the upgrade still fails, and
refused in one line naming the blocking node otherwise (graphopt.opset_upgrade)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from graphopt.cli import main
from graphopt.opset_upgrade import UpgradeError, prepare_for_pass, settle_ir_version, upgrade

RNG = np.random.default_rng(0)
CONV_W = RNG.standard_normal((4, 1, 3, 3)).astype(np.float32)
STATS = {"s": RNG.uniform(0.5, 1.5, 4), "b": RNG.standard_normal(4), "m": RNG.standard_normal(4) * 0.1,
         "v": RNG.uniform(0.5, 2.0, 4)}


def _model(nodes, inputs, outputs, inits, opset: int, ir_version: int) -> onnx.ModelProto:
    if ir_version < 4:  # IR 3: every initializer is a graph input too
        inputs = inputs + [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]
    model = helper.make_model(helper.make_graph(nodes, "old", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", opset)], producer_name="pytorch 0.3")
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model


def conv_bn(opset: int = 6, ir_version: int = 3) -> onnx.ModelProto:
    """x (N,1,8,8) → Conv → BatchNormalization → Relu, as PyTorch 0.3 exported it at opset 6 (``is_test``,
    ``spatial``), or the same model at a current opset (the reference)."""
    inits = [numpy_helper.from_array(CONV_W, "w")] + [
        numpy_helper.from_array(v.astype(np.float32), k) for k, v in STATS.items()]
    legacy = {"is_test": 1, "spatial": 1} if opset < 7 else {}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn", epsilon=1e-5,
                              **legacy),
             helper.make_node("Relu", ["bn"], ["y"], name="relu")]
    if opset < 6:
        raise ValueError("opset ≥ 6")
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits, opset, ir_version)


def _run(model: onnx.ModelProto | str, x: np.ndarray) -> np.ndarray:
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _optimize(tmp_path, model: onnx.ModelProto, *flags: str):
    path, out, report = tmp_path / "old.onnx", tmp_path / "out.onnx", tmp_path / "report.json"
    onnx.save(model, str(path))
    x = RNG.standard_normal((16, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "eval.npz", x=x)
    result = CliRunner().invoke(main, ["optimize", str(path), "-o", str(out), "--no-cache", "--eval-data",
                                       str(tmp_path / "eval.npz"), "--report", str(report), *flags])
    return result, out, report, x


def test_onnxruntime_has_no_kernel_for_the_old_model():
    """Why the old model cannot be the reference itself: BatchNormalization(6) has no kernel any more."""
    with pytest.raises(Exception, match="BatchNormalization"):
        _run(conv_bn(), np.zeros((1, 1, 8, 8), np.float32))


@pytest.mark.parametrize("flags", [["--target", "cpu"], ["--fp16", "--target", "cuda"],
                                   ["--int8", "--calib-random", "--target", "cpu"]], ids=["simplify", "fp16", "int8"])
def test_opset6_batchnorm_through_every_pass(tmp_path, flags):
    result, out, report, x = _optimize(tmp_path, conv_bn(), *flags)
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(str(out))
    assert written.ir_version >= 4
    notes = " ".join(n for row in json.loads(report.read_text())["rows"] for n in row["notes"])
    assert "opset upgraded 6 → 17" in notes and "is_test" in notes
    expected = _run(conv_bn(opset=17, ir_version=8), x)
    if "--fp16" in flags:
        from graphopt.passes.fp16.verify import emulation_copy

        assert any(t.data_type == TensorProto.FLOAT16 for t in written.graph.initializer)
        got = _run(emulation_copy(written, TensorProto.FLOAT16)[0], x)
        assert np.max(np.abs(got - expected)) <= 1e-2 * np.max(np.abs(expected))
    elif "--int8" in flags:
        assert any(n.op_type == "QuantizeLinear" for n in written.graph.node)
        got = _run(str(out), x)
        cosine = float(got.ravel() @ expected.ravel() / np.linalg.norm(got) / np.linalg.norm(expected))
        assert cosine > 0.99
    else:
        np.testing.assert_allclose(_run(str(out), x), expected, rtol=1e-4, atol=1e-5)


def test_spatial0_batchnorm_is_rewritten_with_the_same_arithmetic():
    """``spatial=0``: statistics per activation (C×H×W); the converter asserts spatial=1, so the node is
    rewritten, not just stripped of the attribute."""
    shape = (3, 4, 4)
    stats = {"s": RNG.uniform(0.5, 1.5, shape), "b": RNG.standard_normal(shape), "m": RNG.standard_normal(shape),
             "v": RNG.uniform(0.5, 2.0, shape)}
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in stats.items()]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], name="bn", epsilon=1e-3,
                            is_test=1, spatial=0)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *shape])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *shape])], inits, 6, 3)
    result = upgrade(ir.from_proto(model), 17)
    assert any("spatial=0" in n for n in result.notes)
    proto = ir.to_proto(result.model)
    onnx.checker.check_model(proto, full_check=True)
    x = RNG.standard_normal((5, *shape)).astype(np.float32)
    want = (x - stats["m"]) / np.sqrt(stats["v"] + 1e-3) * stats["s"] + stats["b"]
    np.testing.assert_allclose(_run(proto, x), want, rtol=1e-5, atol=1e-5)


def test_consumed_inputs_of_opset_1_to_5_is_dropped():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu", consumed_inputs=[0]),
             helper.make_node("Neg", ["r"], ["y"], name="neg")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [], 5, 3)
    result = upgrade(ir.from_proto(model), 17)
    assert any("consumed_inputs" in n for n in result.notes)
    x = RNG.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(_run(ir.to_proto(result.model), x), -np.maximum(x, 0))


def test_training_mode_batchnorm_is_refused_in_one_line():
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in STATS.items()]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "mean", "var", "saved_mean", "saved_var"], name="bn",
                            is_test=0)
    model = _model([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 2, 2])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 2, 2]),
                    *(helper.make_tensor_value_info(n, TensorProto.FLOAT, [4])
                      for n in ("mean", "var", "saved_mean", "saved_var"))],
                   inits, 6, 3)
    with pytest.raises(UpgradeError, match=r"node 'bn' \(BatchNormalization\) .*training mode"):
        upgrade(ir.from_proto(model), 17)


def test_ir3_model_with_lifted_constants_satisfies_its_ir_version(tmp_path):
    """fp16 lifts Constant nodes into initializers; on an IR-3 model an initializer must also be a graph
    input (the checker said `_v_4 in initializer but not in graph input`): the IR version is raised."""
    constant = helper.make_node("Constant", [], ["k"], name="k",
                                value=numpy_helper.from_array(np.full((1, 4, 1, 1), 0.5, np.float32)))
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), constant,
             helper.make_node("Mul", ["c", "k"], ["y"], name="mul")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                   [numpy_helper.from_array(CONV_W, "w")], 9, 3)
    result, out, _, x = _optimize(tmp_path, model, "--fp16", "--target", "cuda")
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(str(out), full_check=True)
    written = onnx.load(str(out))
    assert written.ir_version >= 4 and written.opset_import[0].version == 9  # fp16 needs no upgrade


def old_broadcast_add() -> onnx.ModelProto:
    """Conv → Add(broadcast=1, axis=1) at opset 6 with a symbolic batch: onnx's converter cannot move the
    old broadcast to opset 7 without static shapes."""
    bias = numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "bias")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["c", "bias"], ["y"], name="bias_add", broadcast=1, axis=1)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])],
                  [numpy_helper.from_array(CONV_W, "w"), bias], 6, 3)


def test_blocked_upgrade_is_refused_in_one_line_naming_the_node(tmp_path):
    result, out, _, _ = _optimize(tmp_path, old_broadcast_add(), "--int8", "--calib-random", "--target", "cpu")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "node 'bias_add' (Add)" in errors[0] and "symbolic" in errors[0]
    assert not out.exists()


def test_blocked_upgrade_leaves_passes_that_need_none_alone(tmp_path):
    """simplify needs no newer opset: the model stays at opset 6, valid for its IR version (onnxruntime has
    no Add(6) kernel, so nothing could be compared: the report says so)."""
    result, out, report, _ = _optimize(tmp_path, old_broadcast_add(), "--target", "cpu")
    assert result.exit_code == 0, result.stderr
    onnx.checker.check_model(str(out), full_check=True)
    assert onnx.load(str(out)).opset_import[0].version == 6
    assert not json.loads(report.read_text())["rows"][0]["metric"]  # nothing claimed


def test_int8_runs_per_tensor_at_its_own_opset_when_the_upgrade_fails(tmp_path, monkeypatch):
    """An opset-11 model whose node the converter cannot take (simulated: every real opset-10+ node we
    tried converts) is quantized at opset 11 with per-tensor weight scales (per-channel needs 13)."""
    real = onnx.version_converter.convert_version

    def convert(model, target):
        if any(n.name == "conv" for n in model.graph.node):
            raise RuntimeError("Unsupported conversion of this node")
        return real(model, target)

    monkeypatch.setattr(onnx.version_converter, "convert_version", convert)
    model = conv_bn(opset=11, ir_version=6)
    prepared = prepare_for_pass(ir.from_proto(model), type("P", (), {"min_opset": 13, "lowest_opset": 10,
                                                                     "name": "int8", "own_opset_note": ""})())
    assert prepared.model.opset_imports[""] == 11 and "node 'conv' (Conv)" in prepared.notes[0]
    result, out, report, x = _optimize(tmp_path, model, "--int8", "--calib-random", "--target", "cpu")
    assert result.exit_code == 0, result.stderr
    written = onnx.load(str(out))
    assert written.opset_import[0].version == 11
    scales = {t.name: t for t in written.graph.initializer}
    dq = [n for n in written.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and all(int(np.prod(scales[n.input[1]].dims)) == 1 for n in dq)  # per-tensor, one scale each
    notes = " ".join(n for row in json.loads(report.read_text())["rows"] for n in row["notes"])
    assert "int8 runs at opset 11" in notes and "per-tensor" in notes
    expected = _run(conv_bn(opset=17, ir_version=8), x)
    got = _run(str(out), x)
    assert float(got.ravel() @ expected.ravel() / np.linalg.norm(got) / np.linalg.norm(expected)) > 0.99


def test_settle_ir_version_follows_the_rules_of_the_version():
    model = ir.from_proto(conv_bn(opset=6, ir_version=3))
    assert settle_ir_version(model) is None  # IR 3 with every initializer an input: valid as it is
    model.graph.inputs.pop()  # 'v' is now an initializer only: IR 3 forbids it
    assert settle_ir_version(model) == "IR version raised 3 → 4"
    newer = ir.from_proto(conv_bn(opset=17, ir_version=8))
    newer.ir_version = 3
    assert settle_ir_version(newer) == "IR version raised 3 → 8"  # opset 17 needs IR 8
