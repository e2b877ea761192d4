"""The architecture zoo (models/zoo/): each network exports to a valid dynamic-batch ONNX model that
onnxruntime runs, that computes what the torch module computes, and that holds the layer pattern it is in the
zoo for.

Registry tests need nothing beyond the test extras; the build tests skip without torch. Each network is
built once per session (BN statistics from 2 crops instead of the artifacts' 16: the statistics do not
change the graph). The three cheapest networks run in every test run (about 5 s of CPU together); the
others are marked ``slow`` (about 50 s of CPU, 2-3 minutes on the shared 2-core machine).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import models
from models import REFERENCE_MODELS, ZOO_MODELS, get_model
from models.zoo import ZOO, ZooSpec

#: Built in every test run (under 2 s of CPU each); the rest of the zoo is ``slow``.
FAST = ("shufflenetv2-224", "convnext-224", "vit-224")
#: ``resnet18-224`` is built by models/resnet.py; here its network goes through the zoo's recipe.
RESNET = ZooSpec("resnet18-224", "models.resnet:ResNet18", 224, "argmax-agreement", "")
SPECS = {spec.name: spec for spec in (RESNET, *ZOO)}
#: ORT and torch agree to this fraction of the largest |output| (measured: at most 5e-6).
REL_TOL = 1e-4


class Graph:
    """Who produces and who reads each tensor of an ONNX graph, and its constant initializers."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.nodes = list(model.graph.node)
        self.producer = {out: n for n in self.nodes for out in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)
        self.init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for n in self.nodes:
            if n.op_type == "Constant":
                self.init[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.outputs = {o.name for o in model.graph.output}

    def ops(self, op: str) -> list[onnx.NodeProto]:
        return [n for n in self.nodes if n.op_type == op]

    def parent(self, node: onnx.NodeProto, index: int = 0) -> onnx.NodeProto | None:
        return self.producer.get(node.input[index]) if index < len(node.input) else None

    def parent_ops(self, node: onnx.NodeProto) -> set[str]:
        return {p.op_type for name in node.input if (p := self.producer.get(name)) is not None}

    def children(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        return self.consumers.get(node.output[0], [])

    def attr(self, node: onnx.NodeProto, name: str, default=None):
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def weight_shape(self, conv: onnx.NodeProto) -> tuple[int, ...]:
        return self.init[conv.input[1]].shape

    def chain(self, node: onnx.NodeProto, *ops: str) -> bool:
        """``node`` is followed by a path of single-reader nodes of types ``ops``."""
        for op in ops:
            nxt = [c for c in self.children(node) if c.op_type == op]
            if not nxt:
                return False
            node = nxt[0]
        return True


def _residual(g: Graph) -> None:
    """Add(Conv[-BN] branch, Conv[-BN] 1x1 shortcut) and Add(branch, identity): BN folded (zoo) or not."""

    def conv_of(node):
        return g.parent(node) if node is not None and node.op_type == "BatchNormalization" else node

    branches = [[conv_of(g.parent(a, i)) for i in (0, 1)] for a in g.ops("Add")]
    downsample = [b for b in branches if all(n is not None and n.op_type == "Conv" for n in b)]
    assert downsample, "no Add joining a Conv branch and a Conv shortcut"
    shortcut_kernels = {g.weight_shape(n)[2:] for b in downsample for n in b}
    assert (1, 1) in shortcut_kernels, "no 1x1 Conv shortcut"
    assert any("Relu" in g.parent_ops(a) for a in g.ops("Add")), "no identity shortcut"


def _dense(g: Graph) -> None:
    assert max(len(c.input) for c in g.ops("Concat")) >= 8, "no Concat of a whole dense block"
    assert any(g.parent(bn).op_type == "Concat" for bn in g.ops("BatchNormalization")), "no BN after a Concat"
    transitions = [p for p in g.ops("AveragePool") if g.parent(p).op_type == "Conv"]
    assert transitions and all(g.weight_shape(g.parent(p))[2:] == (1, 1) for p in transitions)


def _mobilenetv2(g: Graph) -> None:
    depthwise = [c for c in g.ops("Conv") if g.attr(c, "group", 1) == g.weight_shape(c)[0] > 1]
    assert depthwise and all(g.chain(c, "Clip") for c in depthwise), "depthwise Conv → ReLU6 (Clip)"
    assert {float(g.init[c.input[2]]) for c in g.ops("Clip")} == {6.0}, "ReLU6 exports as Clip(0, 6)"
    residual = [a for a in g.ops("Add") if g.parent_ops(a) == {"Conv"}]
    assert residual and all(g.weight_shape(g.parent(a, 0))[2:] == (1, 1) for a in residual)


def _se_gate(g: Graph, gate: str) -> None:
    """x · gate(Conv(act(Conv(GlobalAveragePool(x))))): the Mul reads the gate and the pool's input."""
    found = 0
    for mul in g.ops("Mul"):
        gates = [g.producer.get(i) for i in mul.input]
        gate_node = next((n for n in gates if n is not None and n.op_type == gate), None)
        if gate_node is None:
            continue
        fc2 = g.parent(gate_node)
        act = g.parent(fc2) if fc2 is not None and fc2.op_type == "Conv" else None
        fc1 = g.parent(act) if act is not None else None
        pool = g.parent(fc1) if fc1 is not None and fc1.op_type == "Conv" else None
        if pool is not None and pool.op_type == "GlobalAveragePool" and pool.input[0] in mul.input:
            found += 1
    assert found >= 3, f"{found} squeeze-excitation blocks gated by {gate}"


def _mobilenetv3(g: Graph) -> None:
    _se_gate(g, "HardSigmoid")
    assert g.ops("HardSwish")


def _efficientnet(g: Graph) -> None:
    _se_gate(g, "Sigmoid")
    silu = [
        m
        for m in g.ops("Mul")
        if g.parent(m, 1) is not None
        and g.parent(m, 1).op_type == "Sigmoid"
        and g.parent(g.parent(m, 1)).output[0] == m.input[0]
    ]
    assert len(silu) >= 10, "SiLU exports as x · Sigmoid(x)"


def _grouped(g: Graph) -> None:
    grouped = [c for c in g.ops("Conv") if 1 < g.attr(c, "group", 1) < g.weight_shape(c)[0]]
    assert grouped and {g.attr(c, "group") for c in grouped} == {32}
    assert {g.weight_shape(c)[:2] for c in grouped} == {(128, 4), (256, 8), (512, 16), (1024, 32)}, (
        "32x4d widths"
    )


def _shuffle(g: Graph) -> None:
    shuffles = [
        t
        for t in g.ops("Transpose")
        if g.parent(t).op_type == "Reshape"
        and g.chain(t, "Reshape")
        and list(g.attr(t, "perm")) == [0, 2, 1, 3, 4]
    ]
    assert len(shuffles) == 7, f"{len(shuffles)} channel shuffles Reshape → Transpose(0,2,1,3,4) → Reshape"
    assert all(g.parent(g.parent(t)).op_type == "Concat" for t in shuffles), "shuffle after the Concat"
    assert any(g.attr(s, "axes") is None and g.init.get(s.input[3]).tolist() == [1] for s in g.ops("Slice"))


def _convnext(g: Graph) -> None:
    blocks = 0
    for ln in g.ops("LayerNormalization"):
        t = g.parent(ln)
        if (
            t.op_type == "Transpose"
            and g.parent(t).op_type == "Conv"
            and g.weight_shape(g.parent(t))[2:] == (7, 7)
        ):
            assert g.chain(ln, "MatMul", "Add", "Div", "Erf"), "LayerNorm → Linear → GELU (erf)"
            blocks += 1
    assert blocks == 5, f"{blocks} blocks dwconv 7x7 → Transpose → LayerNormalization"
    scaled = [m for m in g.ops("Mul") if g.chain(m, "Transpose", "Add")]
    assert len(scaled) == 5, "layer scale Mul → Transpose back → residual Add"


def _attention(g: Graph) -> None:
    softmax = g.ops("Softmax")
    assert softmax and all(g.chain(s, "MatMul") for s in softmax), "softmax(q kᵀ) v"
    assert all(g.attr(n, "axis", -1) == -1 for n in g.ops("LayerNormalization"))


def _vit(g: Graph) -> None:
    _attention(g)
    (patch,) = g.ops("Conv")
    assert g.weight_shape(patch)[2:] == (16, 16) and list(g.attr(patch, "strides")) == [16, 16]
    assert any(g.parent(a) is not None and g.parent(a).op_type == "Concat" for a in g.ops("Add")), (
        "cls ⊕ patches + pos"
    )
    assert len(g.ops("Softmax")) == 4


def _mobilevit(g: Graph) -> None:
    _attention(g)
    unfold = [t for t in g.ops("Transpose") if len(g.attr(t, "perm")) == 6]
    assert len(unfold) == 6, "unfold and fold: 6-D Transpose in each of 3 blocks"
    fuse = [
        c for c in g.ops("Concat") if g.chain(c, "Conv") and "Conv" in g.parent_ops(c) and len(c.input) == 2
    ]
    assert len(fuse) >= 3, "Concat(x, transformer output) → fusing Conv"


def _vgg(g: Graph) -> None:
    (flatten,) = g.ops("Flatten")
    assert g.parent(flatten).op_type == "MaxPool" and g.chain(flatten, "Gemm")
    assert g.init[g.children(flatten)[0].input[1]].shape[1] == 512 * 7 * 7
    assert not g.ops("Add") and len(g.ops("Gemm")) == 3


def _segmentation(g: Graph) -> None:
    resizes = g.ops("Resize")
    assert len(resizes) == 5 and all(g.attr(r, "mode") == b"linear" for r in resizes)
    skips = [c for c in g.ops("Concat") if "Resize" in g.parent_ops(c)]
    assert len(skips) == 4 and all(g.chain(c, "Conv") for c in skips), "×2 Resize ⊕ skip → Conv"
    (last,) = [r for r in resizes if r.output[0] in g.outputs]
    assert g.parent(last).op_type == "Conv" and g.weight_shape(g.parent(last))[1:] == (32, 1, 1), (
        "1x1 classifier"
    )


PATTERNS: dict[str, Callable[[Graph], None]] = {
    "resnet18-224": _residual,
    "densenet-224": _dense,
    "mobilenetv2-224": _mobilenetv2,
    "mobilenetv3-224": _mobilenetv3,
    "efficientnet-224": _efficientnet,
    "resnext-224": _grouped,
    "shufflenetv2-224": _shuffle,
    "convnext-224": _convnext,
    "vit-224": _vit,
    "mobilevit-256": _mobilevit,
    "vgg-224": _vgg,
    "unet-256": _segmentation,
}


def test_zoo_is_registered_with_its_input_spec():
    assert set(ZOO_MODELS) == set(PATTERNS) and len(ZOO_MODELS) >= 10
    for name in ZOO_MODELS:
        model = get_model(name)
        assert not model.committed and model.data is not None and model.input_spec.keys() == {"input"}
    for spec in ZOO:
        model = REFERENCE_MODELS[spec.name]
        assert model.stem == spec.stem and model.check == spec.check
        assert model.input_spec["input"] == (("N", 3, spec.size, spec.size), "float32")
        assert not (models.MODELS_DIR / f"{spec.stem}.onnx").exists(), "zoo models are never committed"


def test_zoo_file_names_are_new():
    zoo_stems = {spec.stem for spec in ZOO}
    others = {m.stem for m in REFERENCE_MODELS.values() if m.name not in {s.name for s in ZOO}}
    assert not zoo_stems & others


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """``built(name) -> (torch module, onnx path)``, each network built and exported once per session."""
    pytest.importorskip("torch", reason="the zoo builds need torch (pip install -e '.[bench]')")
    from models.zoo.build import export, make_network

    out = tmp_path_factory.mktemp("zoo")
    cache: dict[str, tuple[object, Path]] = {}

    def get(name: str):
        if name not in cache:
            spec = SPECS[name]
            net = make_network(spec, bn_images=2)
            cache[name] = (net, export(net, spec, out / f"{spec.stem}.onnx"))
        return cache[name]

    return get


def _params(names):
    return [pytest.param(n, marks=() if n in FAST else pytest.mark.slow) for n in names]


@pytest.mark.parametrize("name", _params(PATTERNS))
def test_zoo_model_exports_runs_and_matches_torch(built, name):
    import torch

    from models.zoo.build import images

    net, path = built(name)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    (inp,) = proto.graph.input
    (out,) = proto.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert (
        inp.type.tensor_type.shape.dim[0].dim_param == "N"
        and out.type.tensor_type.shape.dim[0].dim_param == "N"
    )
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} and proto.opset_import[0].version == 17

    x = images(SPECS[name], 3, seed=7).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (batch3,) = session.run(["logits"], {"input": x})
    singles = [session.run(["logits"], {"input": x[i : i + 1]})[0] for i in range(3)]
    with torch.no_grad():  # torch on one image (its CPU kernels are the slow part); ORT ties the rest
        expected = net(torch.from_numpy(x[:1])).numpy()
    assert batch3.shape == (3, *expected.shape[1:]) and all(y.shape == expected.shape for y in singles)
    assert np.isfinite(batch3).all()
    scale = float(np.abs(expected).max())
    assert scale > 0
    assert np.abs(singles[0] - expected).max() <= REL_TOL * scale, "onnxruntime differs from torch"
    assert np.abs(np.concatenate(singles) - batch3).max() <= REL_TOL * scale, "batch 3 ≠ three batches of 1"
    assert not np.allclose(batch3[0], batch3[1], atol=1e-3 * scale), "different images give the same output"


@pytest.mark.parametrize("name", _params(PATTERNS))
def test_zoo_model_has_its_pattern(built, name):
    _, path = built(name)
    PATTERNS[name](Graph(onnx.load(str(path))))


def test_zoo_build_and_data_are_idempotent_and_match_the_spec(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="the zoo builds need torch")
    from models.zoo import build as zoo_build
    from tests.test_models_registry import check_against_spec

    monkeypatch.setattr(zoo_build, "N_CALIB", 3)
    monkeypatch.setattr(zoo_build, "N_EVAL", 2)
    model = get_model("convnext-224")  # no BatchNorm: the cheapest to build
    model_path, calib_path, eval_path = models.build_model(model.name, tmp_path)
    assert model_path == tmp_path / "convnext_224.onnx"
    check_against_spec(model_path, (calib_path, eval_path), model.input_spec)
    calib, held_out = np.load(calib_path)["input"], np.load(eval_path)["input"]
    assert calib.shape == (3, 3, 224, 224) and held_out.shape == (2, 3, 224, 224)
    assert not any(np.array_equal(a, b) for a in calib for b in held_out), "calib and eval overlap"
    stamps = [p.stat().st_mtime_ns for p in (model_path, calib_path, eval_path)]
    assert models.build_model(model.name, tmp_path) == (model_path, calib_path, eval_path)
    assert [p.stat().st_mtime_ns for p in (model_path, calib_path, eval_path)] == stamps


def test_zoo_batchnorm_is_not_an_identity(built):
    import torch

    net, _ = built("shufflenetv2-224")
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
