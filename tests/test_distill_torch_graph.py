"""The ONNX student as a torch module: same numbers as onnxruntime, trainable, written back and verified."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch", reason="distillation needs torch (pip install 'graphopt[distill]')")

from graphopt.data import DataSet  # noqa: E402
from graphopt.engines import ort as ort_engine  # noqa: E402
from graphopt.errors import InputError, PassFailedError  # noqa: E402
from graphopt.passes.distill.export import export_student, max_relative_error  # noqa: E402
from graphopt.passes.distill.torch_graph import TorchGraph, write_back  # noqa: E402
from tests.conftest import conv_bn_model  # noqa: E402

RNG = np.random.default_rng(7)


def _init(name, shape, scale=0.3):
    return numpy_helper.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _ints(name, values):
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _model(nodes, inputs, outputs, inits, opset=17) -> ir.Model:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto, full_check=True)
    return ir.from_proto(proto)


def encoder_model() -> ir.Model:
    """Token ids (N, S) → embedding Gather + position Slice → LayerNorm → one attention head with a mask
    (MatMul, Transpose, Div, Softmax, Where) → erf-GELU MLP → mean pool (ReduceMean) → outputs
    ``hidden`` (N, S, 8) and ``pooled`` (N, 8); shape arithmetic with Shape/Gather/Unsqueeze/Concat/Reshape."""
    d = 8
    nodes = [
        helper.make_node("Gather", ["emb", "ids"], ["tok"]),
        helper.make_node("Shape", ["ids"], ["ids_shape"]),
        helper.make_node("Gather", ["ids_shape", "one"], ["seq"], axis=0),
        helper.make_node("Unsqueeze", ["seq", "zero_axis"], ["seq1"]),
        helper.make_node("Slice", ["pos", "zero_1d", "seq1", "zero_1d"], ["pos_s"]),
        helper.make_node("Add", ["tok", "pos_s"], ["x0"]),
        helper.make_node("LayerNormalization", ["x0", "ln_g", "ln_b"], ["x"], axis=-1, epsilon=1e-5),
        helper.make_node("MatMul", ["x", "wq"], ["q"]),
        helper.make_node("MatMul", ["x", "wk"], ["k"]),
        helper.make_node("MatMul", ["x", "wv"], ["v"]),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["scores0"]),
        helper.make_node("Div", ["scores0", "sqrt_d"], ["scores1"]),
        helper.make_node("Cast", ["mask"], ["mask_b"], to=TensorProto.BOOL),
        helper.make_node("Unsqueeze", ["mask_b", "one_1d"], ["mask_3"]),
        helper.make_node("Where", ["mask_3", "scores1", "neg"], ["scores"]),
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("Add", ["x", "ctx"], ["h0"]),
        helper.make_node("MatMul", ["h0", "w1"], ["f0"]),
        helper.make_node("Div", ["f0", "sqrt2"], ["f1"]),
        helper.make_node("Erf", ["f1"], ["f2"]),
        helper.make_node("Add", ["f2", "one_f"], ["f3"]),
        helper.make_node("Mul", ["f0", "f3"], ["f4"]),
        helper.make_node("Mul", ["f4", "half"], ["f5"]),
        helper.make_node("MatMul", ["f5", "w2"], ["f6"]),
        helper.make_node("Add", ["h0", "f6"], ["h1"]),
        helper.make_node("Shape", ["h1"], ["h_shape"]),
        helper.make_node("Slice", ["h_shape", "zero_1d", "two_1d"], ["ns"]),
        helper.make_node("Concat", ["ns", "d_1d"], ["target"], axis=0),
        helper.make_node("Reshape", ["h1", "target"], ["hidden"]),
        helper.make_node("ReduceMean", ["hidden"], ["pooled"], axes=[1], keepdims=0),
    ]
    inits = [
        _init("emb", (20, d)), _init("pos", (16, d)), _init("ln_g", (d,)), _init("ln_b", (d,)),
        _init("wq", (d, d)), _init("wk", (d, d)), _init("wv", (d, d)), _init("w1", (d, 16)), _init("w2", (16, d)),
        _ints("one", 1), _ints("zero_axis", [0]), _ints("zero_1d", [0]), _ints("one_1d", [1]),
        _ints("two_1d", [2]), _ints("d_1d", [d]),
        numpy_helper.from_array(np.array(np.sqrt(d), np.float32), "sqrt_d"),
        numpy_helper.from_array(np.array(-1e4, np.float32), "neg"),
        numpy_helper.from_array(np.array(np.sqrt(2), np.float32), "sqrt2"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one_f"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
    ]
    return _model(nodes,
                  [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"]),
                   helper.make_tensor_value_info("mask", TensorProto.INT64, ["N", "S"])],
                  [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["N", "S", d]),
                   helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["N", d])], inits)


def pool_model() -> ir.Model:
    """(N, 3, 9, 9) → Conv (stride 2, asymmetric pads) → Relu → MaxPool → AveragePool → Sigmoid ·
    GlobalAveragePool → Flatten → Gemm (transB) → Clip."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[0, 0, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["m"], kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("AveragePool", ["m"], ["a"], kernel_shape=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["sw"]),
        helper.make_node("GlobalAveragePool", ["sw"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fb"], ["y0"], transB=1, alpha=0.5),
        helper.make_node("Clip", ["y0", "lo", ""], ["y"]),
    ]
    inits = [_init("w", (6, 3, 3, 3)), _init("b", (6,)), _init("fc", (4, 6)), _init("fb", (4,)),
             numpy_helper.from_array(np.array(-0.2, np.float32), "lo")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 9, 9])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], inits)


def _encoder_feeds(n=6, s=7):
    mask = np.ones((n, s), np.int64)
    mask[:, -2:] = 0
    return {"ids": RNG.integers(0, 20, (n, s)).astype(np.int64), "mask": mask}


def _torch_outputs(module, feeds):
    with torch.no_grad():
        return {k: v.numpy() for k, v in module({k: torch.from_numpy(v) for k, v in feeds.items()}).items()}


@pytest.mark.parametrize("build, feeds", [
    (encoder_model, _encoder_feeds),
    (pool_model, lambda: {"x": RNG.standard_normal((5, 3, 9, 9)).astype(np.float32)}),
    (lambda: ir.from_proto(conv_bn_model()), lambda: {"input": RNG.random((5, 1, 8, 8), dtype=np.float32)}),
])
def test_torch_graph_computes_what_onnxruntime_computes(build, feeds):
    model, data = build(), feeds()
    module = TorchGraph(model).eval()
    expected = ort_engine.build(model).run(data)
    errors = max_relative_error(expected, _torch_outputs(module, data))
    assert max(errors.values()) < 1e-5, errors


def test_which_initializers_train():
    module = TorchGraph(ir.from_proto(conv_bn_model()))
    assert set(module.parameter_names) == {"w", "b", "bn_scale", "bn_bias", "fc_w", "fc_b"}
    assert set(module.buffer_names) == {"bn_mean", "bn_var"}
    scalars = TorchGraph(encoder_model())
    assert "sqrt_d" not in scalars.parameter_names and "emb" in scalars.parameter_names


def test_unsupported_op_is_named_before_training():
    model = _model([helper.make_node("NonMaxSuppression", ["b", "s"], ["y"])],
                   [helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 4, 4]),
                    helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 1, 4])],
                   [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 3])], [])
    with pytest.raises(InputError, match="NonMaxSuppression"):
        TorchGraph(model)


def _train_a_little(module, feeds, steps=3):
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    module.train()
    for _ in range(steps):
        outputs = module({k: torch.from_numpy(v) for k, v in feeds.items()})
        loss = sum(o.float().square().mean() for o in outputs.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return module.eval()


def test_exported_student_equals_the_trained_torch_module():
    model = ir.from_proto(conv_bn_model())
    feeds = {"input": RNG.random((16, 1, 8, 8), dtype=np.float32)}
    module = _train_a_little(TorchGraph(model), feeds)
    exported, error = export_student(module, model, DataSet(dict(feeds)))
    assert error < 1e-5
    got = ort_engine.build(exported).run(feeds)
    assert max(max_relative_error(_torch_outputs(module, feeds), got).values()) < 1e-5
    # training moved the weights and the BatchNorm statistics, and the file holds the new ones
    before = ort_engine.build(model).run(feeds)["logits"]
    assert np.abs(before - got["logits"]).max() > 1e-2
    written = write_back(module, model)
    assert not np.allclose(written.graph.initializers["bn_mean"].const_value.numpy(),
                           model.graph.initializers["bn_mean"].const_value.numpy())
    # the teacher's interface is untouched
    assert [v.name for v in exported.graph.inputs] == ["input"]
    assert [v.name for v in exported.graph.outputs] == ["logits"]
    assert str(exported.graph.inputs[0].shape[0]) == "N"


def test_encoder_export_round_trip():
    model, feeds = encoder_model(), _encoder_feeds()
    module = _train_a_little(TorchGraph(model), feeds)
    _, error = export_student(module, model, DataSet(dict(feeds)))
    assert error < 1e-5


def test_export_refuses_a_file_that_disagrees_with_the_module():
    model = ir.from_proto(conv_bn_model())
    feeds = {"input": RNG.random((4, 1, 8, 8), dtype=np.float32)}
    module = TorchGraph(model).eval()
    with torch.no_grad():  # the module now computes something the ONNX graph's ops would not
        module.weight_transform = lambda name, w: w * 2.0 if name == "fc_w" else w
        with pytest.raises(PassFailedError, match="differs from the trained torch module"):
            export_student(module, model, DataSet(dict(feeds)))


def test_weight_transform_hook_is_applied_to_trainable_weights():
    model = ir.from_proto(conv_bn_model())
    feeds = {"input": RNG.random((4, 1, 8, 8), dtype=np.float32)}
    plain = _torch_outputs(TorchGraph(model).eval(), feeds)["logits"]
    seen: list[str] = []

    def zero_fc(name, weight):
        seen.append(name)
        return torch.zeros_like(weight) if name == "fc_w" else weight

    hooked = _torch_outputs(TorchGraph(model, weight_transform=zero_fc).eval(), feeds)["logits"]
    assert "fc_w" in seen and "bn_mean" not in seen
    fc_b = model.graph.initializers["fc_b"].const_value.numpy()
    np.testing.assert_allclose(hooked, np.broadcast_to(fc_b, plain.shape), rtol=1e-6)
