"""PassManager: ordering, needs, validation, lossless rollback, opset upgrade, cache, report rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.api import optimize
from graphopt.cache import PassCache
from graphopt.data import load_data
from graphopt.errors import InputError, PassFailedError
from graphopt.manager import PassManager
from graphopt.pass_base import GraphoptPass, PassContext
from graphopt.passes.simplify import SimplifyPass
from graphopt.target import Target
from tests.conftest import conv_bn_model, save_data


@dataclasses.dataclass(frozen=True)
class ScaleOptions:
    factor: float = 2.0


class ScaleWeights(GraphoptPass):
    """Multiplies the classifier weights: changes outputs (a deliberately wrong 'lossless' pass)."""

    name = "scale-weights"
    Options = ScaleOptions
    lossless = True

    def call(self, model):
        model = model.clone()
        weight = model.graph.initializers["fc_w"]
        weight.const_value = ir.tensor(weight.const_value.numpy() * self.options.factor, name="fc_w")
        return self.result(model, True, {"factor": self.options.factor})


class NeedsCalib(GraphoptPass):
    name = "needs-calib"
    needs = frozenset({"calib"})
    refuses_after = frozenset({"scale-weights"})

    def call(self, model):
        return self.result(model.clone(), False)


class BreaksModel(GraphoptPass):
    name = "breaks-model"

    def call(self, model):
        model = model.clone()
        model.graph.outputs[0].name = "renamed"
        node = model.graph.node(0)
        node.op_type = "NoSuchOp"
        return self.result(model, True)


class NeedsOpset13(GraphoptPass):
    name = "needs-13"
    min_opset = 13

    def call(self, model):
        return self.result(model.clone(), False)


def context(**kwargs):
    return PassContext(target=Target("cpu"), **kwargs)


def test_order_refused_at_construction():
    with pytest.raises(InputError, match="cannot run after 'scale-weights'"):
        PassManager([ScaleWeights(), NeedsCalib()], context(calib=object()))


def test_duplicate_pass_refused():
    with pytest.raises(InputError, match="listed twice"):
        PassManager([SimplifyPass(), SimplifyPass()], context())


def test_missing_need_refused_before_work():
    with pytest.raises(InputError, match="needs calib data: give --calib-data"):
        PassManager([NeedsCalib()], context())


def test_lossless_pass_that_changes_outputs_is_rolled_back(tmp_path):
    eval_data = load_data(save_data(tmp_path / "e.npz"))
    model = ir.from_proto(conv_bn_model())
    result = PassManager([ScaleWeights()], context(eval=eval_data))(model)
    row = result.rows[0]
    assert row.status == "rolled back"
    assert "outputs differ from the original" in row.notes[-1]
    np.testing.assert_array_equal(result.model.graph.initializers["fc_w"].const_value.numpy(),
                                  model.graph.initializers["fc_w"].const_value.numpy())


def test_rollback_also_uses_probe_inputs_without_eval_data():
    result = PassManager([ScaleWeights()], context())(ir.from_proto(conv_bn_model()))
    assert result.rows[0].status == "rolled back"
    assert "<probe inputs>" in result.rows[0].notes[-1]


def test_invalid_result_of_lossy_pass_fails_with_pass_name():
    with pytest.raises(PassFailedError, match="pass 'breaks-model' produced an invalid model"):
        PassManager([BreaksModel()], context())(ir.from_proto(conv_bn_model()))


def test_old_opset_upgraded_for_passes_that_need_it():
    result = PassManager([NeedsOpset13()], context())(ir.from_proto(conv_bn_model(opset=11)))
    assert result.model.opset_imports[""] == 17
    assert any("opset upgraded 11 → 17" in n for n in result.rows[0].notes)


def test_rows_record_nodes_and_metric(tmp_path):
    eval_data = load_data(save_data(tmp_path / "e.npz"))
    result = PassManager([SimplifyPass()], context(eval=eval_data))(ir.from_proto(conv_bn_model()))
    row = result.rows[0]
    assert row.status == "applied"
    assert row.nodes_before == 6 and row.nodes_after < 6
    assert row.metric["outputs"][0]["kind"] == "accuracy"
    assert row.metric["worst_drop_points"] == pytest.approx(0.0, abs=1e-9)


def test_cache_hit_on_second_run_and_miss_when_option_changes(tmp_path):
    cache = PassCache(tmp_path / "cache")
    first = PassManager([SimplifyPass()], context(), cache)(ir.from_proto(conv_bn_model()))
    second = PassManager([SimplifyPass()], context(), cache)(ir.from_proto(conv_bn_model()))
    assert not first.rows[0].cache_hit and second.rows[0].cache_hit
    assert second.rows[0].stats == first.rows[0].stats
    changed = PassManager([SimplifyPass(SimplifyPass.Options(fuse_batchnorm=False))], context(), cache)(
        ir.from_proto(conv_bn_model()))
    assert not changed.rows[0].cache_hit


def test_no_cache_flag_disables_cache(tmp_path, model_path):
    optimize(model_path, tmp_path / "a.onnx", target="cpu", cache_dir=tmp_path / "c", cache=False)
    assert not (tmp_path / "c").exists()
    optimize(model_path, tmp_path / "b.onnx", target="cpu", cache_dir=tmp_path / "c")
    assert any((tmp_path / "c").rglob("*.onnx"))


def test_quality_gate(tmp_path, model_path):
    eval_path = save_data(tmp_path / "e.npz")
    result = optimize(model_path, tmp_path / "o.onnx", eval_data=eval_path, target="cpu", max_accuracy_drop=0.0)
    assert result.passed and result.report.quality_gate["passed"]
    assert (tmp_path / "o.onnx").exists()


class ToCustomOp(GraphoptPass):
    """Swaps Relu for a custom-domain op onnxruntime cannot run: the result cannot be measured here."""

    name = "to-custom-op"

    def call(self, model):
        model = model.clone()
        for node in model.graph:
            if node.op_type == "Relu":
                node.domain = "com.acme"
        model.opset_imports["com.acme"] = 1
        return self.result(model, True)


def test_unrunnable_result_claims_no_metric_and_gate_is_unverified(tmp_path, model_path):
    eval_path = save_data(tmp_path / "e.npz")
    result = optimize(model_path, tmp_path / "o.onnx", passes=[ToCustomOp()], eval_data=eval_path, target="cpu",
                      max_accuracy_drop=0.5, cache=False)
    row = result.report.rows[0]
    assert row.metric is None and row.metric_summary.startswith("not measured")
    assert result.report.quality_gate["passed"] is None
    assert any("budget not verified" in w for w in result.report.warnings)


def test_model_that_fails_on_probe_inputs_gets_one_line_input_error():
    """A model whose run-time shapes do not fit the generated probe inputs (Reshape to rows of 3 of a
    16-wide dynamic feature dim) is reported as bad input, naming the probe shapes and the fix."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "F"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["R", 3])
    shape = numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g", [x], [y], [shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(InputError, match=r"fails on <probe inputs> \(x 8x16\).*give --eval-data") as info:
        PassManager([SimplifyPass()], context())(ir.from_proto(model))
    assert "\n" not in str(info.value)
