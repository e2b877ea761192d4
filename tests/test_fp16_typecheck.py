"""Cast clean-up and type checks of low-precision graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from graphopt.passes.fp16.blocklist import has_native_cpu_kernel
from graphopt.passes.fp16.typecheck import (
    check_types,
    drop_duplicate_producers,
    infer,
    remove_redundant_casts,
)

F, H = TensorProto.FLOAT, TensorProto.FLOAT16


def model(nodes, inputs, outputs, inits=()):
    m = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs, list(inits)),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def cleaned(proto, original=()):
    m = ir.from_proto(infer(proto))
    counts = remove_redundant_casts(m, set(original))
    return counts, ir.to_proto(m)


def test_inserted_round_trip_is_removed_and_graph_output_keeps_its_name():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Cast", ["r"], ["r16"], to=H, name="c16"),
             helper.make_node("Cast", ["r16"], ["r32"], to=F, name="c32"),
             helper.make_node("Neg", ["r32"], ["y"], name="neg"),
             helper.make_node("Cast", ["y"], ["y16"], to=H, name="o16"),
             helper.make_node("Cast", ["y16"], ["out"], to=F, name="o32")]
    proto = model(nodes, [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("out", F, [3])])
    counts, out = cleaned(proto)
    assert counts["cast round trips removed"] == 2
    assert [n.op_type for n in out.graph.node] == ["Relu", "Neg"]
    assert out.graph.output[0].name == "out"
    x = np.array([-1.0, 2.5, 1e-4], np.float32)
    got = ort.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, -np.maximum(x, 0))


def test_lossy_round_trip_of_the_original_model_is_kept():
    nodes = [helper.make_node("Cast", ["x"], ["x16"], to=H, name="c16"),
             helper.make_node("Cast", ["x16"], ["x32"], to=F, name="c32"),
             helper.make_node("Neg", ["x32"], ["y"], name="neg")]
    proto = model(nodes, [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("y", F, [3])])
    counts, out = cleaned(proto, original={"c16", "c32"})
    assert "cast round trips removed" not in counts
    assert [n.op_type for n in out.graph.node] == ["Cast", "Cast", "Neg"]


def test_lossless_round_trip_and_noop_cast_are_removed_even_if_original():
    nodes = [helper.make_node("Cast", ["x"], ["x32"], to=F, name="up"),
             helper.make_node("Cast", ["x32"], ["x16"], to=H, name="down"),
             helper.make_node("Cast", ["x16"], ["same"], to=H, name="noop"),
             helper.make_node("Neg", ["same"], ["y"], name="neg")]
    proto = model(nodes, [helper.make_tensor_value_info("x", H, [3])], [helper.make_tensor_value_info("y", H, [3])])
    counts, out = cleaned(proto, original={"up", "down", "noop"})
    assert [n.op_type for n in out.graph.node] == ["Neg"]
    assert sum(counts.values()) >= 2


def test_cast_of_constant_is_folded_into_the_constant():
    w = numpy_helper.from_array(np.array([1.5, -2.0, 3.25], np.float16), "w")
    nodes = [helper.make_node("Cast", ["w"], ["w32"], to=F, name="cw"),
             helper.make_node("Add", ["x", "w32"], ["y"], name="add")]
    proto = model(nodes, [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("y", F, [3])], [w])
    counts, out = cleaned(proto)
    assert counts["constant casts folded"] == 1
    assert [n.op_type for n in out.graph.node] == ["Add"]
    assert [i.data_type for i in out.graph.initializer] == [F]


def test_duplicate_casts_are_merged_and_duplicate_producers_dropped():
    nodes = [helper.make_node("Cast", ["x"], ["a"], to=H, name="c1"),
             helper.make_node("Cast", ["x"], ["b"], to=H, name="c2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="add")]
    proto = model(nodes, [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("y", H, [3])])
    counts, out = cleaned(proto)
    assert counts["duplicate casts merged"] == 1
    assert sum(n.op_type == "Cast" for n in out.graph.node) == 1
    twice = model([nodes[0], onnx.NodeProto(), nodes[2]], proto.graph.input, proto.graph.output)
    twice.graph.node[1].CopyFrom(nodes[0])
    twice.graph.node[2].input[1] = "a"
    assert drop_duplicate_producers(twice) == 1 and len(twice.graph.node) == 2


def test_check_types_flags_cast_disagreeing_with_value_info_and_fp16_resize_scales():
    nodes = [helper.make_node("Cast", ["x"], ["c"], to=H, name="cast"), helper.make_node("Relu", ["c"], ["y"], name="r")]
    proto = model(nodes, [helper.make_tensor_value_info("x", F, [3])], [helper.make_tensor_value_info("y", H, [3])])
    proto.graph.value_info.append(helper.make_tensor_value_info("c", F, [3]))
    assert check_types(proto)
    resize = model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="rs")],
                   [helper.make_tensor_value_info("x", H, [1, 1, 2, 2])],
                   [helper.make_tensor_value_info("y", H, None)],
                   [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float16), "s")])
    assert check_types(resize)
    ok = model([helper.make_node("Relu", ["x"], ["y"], name="r")], [helper.make_tensor_value_info("x", H, [3])],
               [helper.make_tensor_value_info("y", H, [3])])
    assert check_types(ok) == []


def test_cpu_kernel_probe_asks_onnxruntime():
    # Transpose has a native fp16 CPU kernel; Exp is wrapped in Casts by onnxruntime (no kernel)
    assert has_native_cpu_kernel("", "Transpose", 17, (H,), (H,))
    assert not has_native_cpu_kernel("", "Exp", 17, (H,), (H,))
    assert has_native_cpu_kernel("", "Exp", 17, (F,), (F,))
