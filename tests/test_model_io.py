"""Model I/O: loading from every source, normalisation of old models, atomic saves, hashes."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt.model_io as model_io
from graphopt import large
from graphopt.errors import InputError
from graphopt.model_io import load_model, model_hash, normalize_model, save_model, upgrade_opset
from tests.conftest import conv_bn_model


def run_ort(model, feeds):
    proto = model if isinstance(model, onnx.ModelProto) else ir.to_proto(model)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_load_from_path_proto_and_ir_model(model_path):
    proto = onnx.load(str(model_path))
    from_path = load_model(model_path)
    from_proto = load_model(proto)
    assert model_hash(from_path) == model_hash(from_proto)
    assert load_model(from_proto) is from_proto


def test_hash_changes_with_weights():
    a, b = conv_bn_model(seed=0), conv_bn_model(seed=1)
    assert model_hash(a) != model_hash(b)
    assert model_hash(a) == model_hash(conv_bn_model(seed=0))


def test_save_refuses_input_and_is_atomic(tmp_path, model_path):
    model = load_model(model_path)
    with pytest.raises(InputError, match="refusing to overwrite"):
        save_model(model, model_path, input_path=model_path)
    out = save_model(model, tmp_path / "copy.onnx")
    assert model_hash(load_model(out)) == model_hash(model)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_save_leaves_no_file(tmp_path, model_path, monkeypatch):
    def boom(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model_io.os, "fsync", boom)
    with pytest.raises(InputError, match="No space left"):
        save_model(load_model(model_path), tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_large_models_get_external_data(tmp_path, model_path, monkeypatch):
    monkeypatch.setattr(large, "LARGE_MODEL_BYTES", 2000)
    proto = onnx.load(str(model_path))
    out = save_model(proto, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").exists()
    assert len(proto.graph.initializer[0].raw_data) or proto.graph.initializer[0].float_data  # input proto untouched
    onnx.checker.check_model(str(out), full_check=True)
    feeds = {"input": np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)}
    from_file = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, feeds)
    np.testing.assert_allclose(from_file[0], run_ort(proto, feeds)[0], rtol=1e-6)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_initializers_listed_as_inputs_are_removed_from_inputs():
    proto = conv_bn_model()
    for init in proto.graph.initializer:
        proto.graph.input.append(helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    proto.ir_version = 3
    model = ir.from_proto(proto)
    notes = normalize_model(model)
    assert [v.name for v in model.graph.inputs] == ["input"]
    assert any("were also graph inputs" in n for n in notes)


def test_constant_node_weights_are_lifted():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w")),
         helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = ir.from_proto(proto)
    notes = normalize_model(model)
    assert "w" in model.graph.initializers
    assert all(n.op_type != "Constant" for n in model.graph)
    assert any("lifted" in n for n in notes)
    x = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(run_ort(model, {"x": x})[0], x @ w)


def test_opset_upgrade_keeps_numerics():
    old = conv_bn_model(opset=11)
    upgraded = upgrade_opset(ir.from_proto(old), 17)
    assert model_io.opset_version(upgraded) == 17
    feeds = {"input": np.random.default_rng(0).random((3, 1, 8, 8), dtype=np.float32)}
    np.testing.assert_allclose(run_ort(upgraded, feeds)[0], run_ort(old, feeds)[0], rtol=1e-5, atol=1e-6)


def test_custom_domains_detected():
    graph = helper.make_graph([helper.make_node("Foo", ["x"], ["y"], domain="acme")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("acme", 1)])
    assert model_io.custom_domains(ir.from_proto(proto)) == {"acme"}
    assert model_io.custom_domains(ir.from_proto(conv_bn_model())) == set()
