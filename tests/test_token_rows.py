"""simplify on cpu: transformer activations stay 2-D ``[tokens, channels]`` between their Gemms
(graphopt.passes.token_rows): the outputs match onnxruntime on the original model, the flatten / unflatten
Reshapes and their Shape chains go, and tensors whose shapes are not provably equal stay 3-D."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.api import optimize
from graphopt.passes.simplify import SimplifyOptions, SimplifyPass
from graphopt.passes.token_rows import token_rows

C, HEADS = 8, 2


class _Graph:
    """A small builder for the onnxsim form of a transformer layer (batched Gemms between 3-D tensors)."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(3)
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}{self.count}"

    def const(self, values, dtype=np.int64) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(values, dtype), name))
        return name

    def weight(self, *shape: int) -> str:
        return self.const(self.rng.standard_normal(shape) * 0.3, np.float32)

    def op(self, op_type: str, inputs: list[str], **attributes) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out + "_node", **attributes))
        return out

    def lead(self, x: str) -> str:
        return self.op("Slice", [self.op("Shape", [x]), self.const([0]), self.const([-1])])

    def dense(self, x: str, k: int, n: int) -> str:
        """Reshape(x, [-1, k]) → Gemm → Reshape(·, Concat(Shape(x)[:-1], [n])), as onnxsim writes it."""
        flat = self.op("Reshape", [x, self.const([-1, k])])
        y = self.op("Gemm", [flat, self.weight(k, n), self.weight(n)])
        return self.op("Reshape", [y, self.op("Concat", [self.lead(x), self.const([n])], axis=0)])

    def layer_norm(self, x: str) -> str:
        return self.op("LayerNormalization", [x, self.weight(C), self.weight(C)], axis=-1)

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", [self.op("Div", [x, self.const(1.4142135, np.float32)])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, self.const(1.0, np.float32)])]),
                               self.const(0.5, np.float32)])

    def head_dims(self, x: str) -> tuple[str, str]:
        shape = self.op("Shape", [x])
        return tuple(self.op("Unsqueeze", [self.op("Gather", [shape, self.const(i)], axis=0), self.const([0])])
                     for i in (0, 1))

    def attention_like(self, x: str, zero_copy_target: bool = False) -> str:
        """Projection → [B, S, H, D] → Transpose there and back → [B, S, -1] → MatMul + bias (the 3-D
        MatMul + Add onnxsim leaves for attention outputs)."""
        batch, seq = self.head_dims(x)
        target = (self.const([0, 0, HEADS, C // HEADS]) if zero_copy_target else
                  self.op("Concat", [batch, seq, self.const([HEADS, C // HEADS])], axis=0))
        heads = self.op("Reshape", [self.dense(x, C, C), target])
        back = self.op("Transpose", [self.op("Transpose", [heads], perm=[0, 2, 1, 3])], perm=[0, 2, 1, 3])
        merged = self.op("Reshape", [back, self.op("Concat", [batch, seq, self.const([-1])], axis=0)])
        return self.op("Add", [self.weight(C), self.op("MatMul", [merged, self.weight(C, C)])])

    def model(self, outputs: list[str], extra_inputs: tuple[str, ...] = ()) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", "S", C]) for n in ("x", *extra_inputs)]
        graph = helper.make_graph(self.nodes, "g", inputs,
                                  [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                                  self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return onnx.shape_inference.infer_shapes(model)


def _encoder(zero_copy_target: bool = False, foreign_residual: bool = False) -> onnx.ModelProto:
    """LN → attention-like block + residual → LN → FFN (GELU) + residual → LN; outputs: the last LN
    (3-D) and a mean over the sequence (a pooling that reads the 3-D tensor)."""
    g = _Graph()
    h = g.layer_norm("x")
    h = g.layer_norm(g.op("Add", [g.attention_like(h, zero_copy_target), h]))
    ffn = g.dense(g.gelu(g.dense(h, C, 4 * C)), 4 * C, C)
    residual = g.op("Add", [ffn, "y" if foreign_residual else h])
    out = g.layer_norm(residual)
    pooled = g.op("ReduceMean", [out], axes=[1], keepdims=0)
    return g.model([out, pooled], extra_inputs=("y",) if foreign_residual else ())


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _feeds(model: onnx.ModelProto, batch: int, seq: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch * 100 + seq)
    return {i.name: rng.standard_normal((batch, seq, C)).astype(np.float32) for i in model.graph.input}


def _rewrite(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    rewritten, moved = token_rows(ir.from_proto(model))
    return ir.to_proto(rewritten), moved


def _producer_ops(model: onnx.ModelProto, op_type: str) -> list[str]:
    """The op producing the data input of every ``op_type`` node."""
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    return [producers.get(n.input[0], "input") for n in model.graph.node if n.op_type == op_type]


@pytest.mark.parametrize("batch, seq", [(3, 5), (1, 7)])
def test_rows_match_the_original_and_the_reshape_chains_go(batch, seq):
    original = _encoder()
    rewritten, moved = _rewrite(original)
    # attention MatMul + bias, 2 residual Adds, the middle LayerNorm, GELU's five ops; not the first
    # LayerNorm (its input is 3-D) nor the last (it writes a graph output)
    assert moved == 10
    feeds = _feeds(original, batch, seq)
    for got, want in zip(_run(rewritten, feeds), _run(original, feeds)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    ops = [n.op_type for n in rewritten.graph.node]
    before = [n.op_type for n in original.graph.node]
    # every Gemm reads rows straight from a LayerNorm / GELU, except the first one (the source's flatten)
    assert _producer_ops(rewritten, "Gemm").count("Reshape") == 1
    assert _producer_ops(original, "Gemm").count("Reshape") == 3
    assert ops.count("Shape") < before.count("Shape")
    assert ops.count("Reshape") < before.count("Reshape")
    assert "Sum" not in ops and ops.count("MatMul") == 1  # the 3-D attention MatMul now reads rows


def test_rows_keep_add_and_layernorm_unfused_in_onnxruntime(tmp_path):
    """2-D residual Adds are not fused into onnxruntime's (slow on CPU) SkipLayerNormalization."""
    rewritten, _ = _rewrite(_encoder())
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "ort.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(rewritten.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = [n.op_type for n in onnx.load(str(tmp_path / "ort.onnx")).graph.node]
    assert "SkipLayerNormalization" not in optimized and "LayerNormalization" in optimized


def test_a_residual_of_unproven_shape_stays_3d():
    """``y`` is a graph input of shape [N, S, C] like the rows' tensor, but nothing proves its N and S are
    the same (it could broadcast): that Add, and the LayerNorm after it, stay 3-D."""
    original = _encoder(foreign_residual=True)
    rewritten, moved = _rewrite(original)
    assert moved > 0
    producers = {o: n for n in rewritten.graph.node for o in n.output}
    add = next(n for n in rewritten.graph.node if n.op_type == "Add" and "y" in n.input)
    other = producers[next(i for i in add.input if i != "y")]
    assert other.op_type == "Reshape"  # the FFN output rebuilt as 3-D for it
    feeds = _feeds(original, 2, 4)
    feeds_broadcast = {**feeds, "y": feeds["y"][:1]}  # [1, S, C] broadcasts over the batch
    for case in (feeds, feeds_broadcast):
        for got, want in zip(_run(rewritten, case), _run(original, case)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_reshape_target_with_a_zero_keeps_reading_3d():
    """``Reshape(v, [0, 0, H, D])`` copies v's first two dims: on rows that would copy [M, C]."""
    original = _encoder(zero_copy_target=True)
    rewritten, _ = _rewrite(original)
    zero_targets = {i.name for i in rewritten.graph.initializer if list(numpy_helper.to_array(i).ravel()[:2]) == [0, 0]
                    and numpy_helper.to_array(i).size == 4}
    producers = {o: n.op_type for n in rewritten.graph.node for o in n.output}
    zero_reshape = next(n for n in rewritten.graph.node if n.op_type == "Reshape" and n.input[1] in zero_targets)
    assert producers[zero_reshape.input[0]] == "Reshape"  # the unflatten before it stays
    feeds = _feeds(original, 2, 3)
    for got, want in zip(_run(rewritten, feeds), _run(original, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_simplify_runs_it_on_cpu_only(tmp_path):
    original = _encoder()
    cpu = optimize(original, tmp_path / "cpu.onnx", target="cpu")
    assert cpu.report.rows[0].stats["ops_on_token_rows"] == 10
    # the residual Adds now run on rows: residual_sum (after token_rows) leaves them Adds, ORT does not fuse 2-D
    assert "Sum" not in [n.op_type for n in onnx.load(str(tmp_path / "cpu.onnx")).graph.node]
    foreign = optimize(_encoder(foreign_residual=True), tmp_path / "foreign.onnx", target="cpu")
    assert [n.op_type for n in onnx.load(str(tmp_path / "foreign.onnx")).graph.node].count("Sum") == 1  # the 3-D one
    assert foreign.report.rows[0].stats["residual_sums"] == 1
    feeds = _feeds(original, 2, 6)
    for got, want in zip(_run(onnx.load(str(tmp_path / "cpu.onnx")), feeds), _run(original, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    off = optimize(original, tmp_path / "off.onnx", target="cpu", passes=[SimplifyPass(SimplifyOptions(token_rows=False))])
    assert "ops_on_token_rows" not in off.report.rows[0].stats
    trt = optimize(original, tmp_path / "trt.onnx", target="trt")
    assert "ops_on_token_rows" not in trt.report.rows[0].stats
    assert _producer_ops(onnx.load(str(tmp_path / "trt.onnx")), "Gemm").count("Reshape") == 3


def test_old_opsets_and_graphs_without_rows_are_returned_unchanged():
    model = ir.from_proto(_encoder())
    model.opset_imports[""] = 12
    same, moved = token_rows(model)
    assert same is model and moved == 0
    g = _Graph()
    plain = ir.from_proto(g.model([g.op("Relu", ["x"])]))  # no flatten: no rows to learn from
    same, moved = token_rows(plain)
    assert same is plain and moved == 0
