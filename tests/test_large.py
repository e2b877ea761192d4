"""Models over protobuf's 2 GB limit, exercised on small models with the thresholds lowered.

``graphopt.large.LARGE_MODEL_BYTES`` / ``DETACH_FROM_BYTES`` lowered to a few KB send a ~100 KB
model down every code path a > 2 GB one takes (skeleton protos, weights handed to onnxruntime by
reference, onnxsim skipped, external-data saves); each result is compared with the same pipeline
run the ordinary way. The real > 2 GB run is ``tests/test_large_slow.py`` and ``tools/bench_large.py``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphopt
from graphopt import large
from graphopt.engines import ort as ort_engine
from graphopt.model_io import load_model, model_hash, save_model
from graphopt.passes.fp16 import Fp16Options
from graphopt.passes.int8 import Int8Options

HIDDEN = 48


def chain_model(layers: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x (N, 48) → [MatMul(48×48) → Add → Relu] × layers → y."""
    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        inits += [numpy_helper.from_array((rng.standard_normal((HIDDEN, HIDDEN)) / HIDDEN**0.5).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(HIDDEN).astype(np.float32) * 0.1, f"b{i}")]
        out = "y" if i == layers - 1 else f"h{i}"
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"m{i}"], name=f"matmul{i}"),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"], name=f"add{i}"),
                  helper.make_node("Relu", [f"a{i}"], [out], name=f"relu{i}")]
        current = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", HIDDEN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", HIDDEN])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def save_external(proto: onnx.ModelProto, path) -> None:
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=1024)


@pytest.fixture
def small_is_large(monkeypatch):
    """Every model of 1 KB of weights or more is 'over 2 GB'."""
    monkeypatch.setattr(large, "LARGE_MODEL_BYTES", 1024)
    monkeypatch.setattr(large, "DETACH_FROM_BYTES", 1024)


@pytest.fixture
def chain_path(tmp_path):
    path = tmp_path / "chain.onnx"
    save_external(chain_model(), path)
    return path


def calib_file(tmp_path, n: int = 32) -> str:
    path = tmp_path / "calib.npz"
    np.savez(path, x=np.random.default_rng(5).standard_normal((n, HIDDEN)).astype(np.float32))
    return str(path)


def outputs_from_file(path, x: np.ndarray) -> np.ndarray:
    """onnxruntime on the written file (external data resolved beside it), independent of graphopt."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = x.astype(np.float16) if session.get_inputs()[0].type == "tensor(float16)" else x
    return np.asarray(session.run(None, {"x": feed})[0], dtype=np.float32)


def test_external_data_is_mapped_not_loaded(chain_path):
    model = load_model(chain_path)
    weights = [v.const_value for name, v in model.graph.initializers.items() if name.startswith("w")]
    assert len(weights) == 3 and all(isinstance(t, ir.ExternalTensor) for t in weights)
    assert large.keeps_weights_detached(model)  # a plain proto would only point at the files


def test_hash_is_the_same_for_every_storage_and_changes_with_one_weight(chain_path, tmp_path):
    proto = chain_model()
    inline = tmp_path / "inline.onnx"
    onnx.save(proto, str(inline))
    hashes = {model_hash(proto), model_hash(load_model(chain_path)), model_hash(load_model(inline))}
    assert len(hashes) == 1
    changed = chain_model()
    array = numpy_helper.to_array(changed.graph.initializer[0]).copy()
    array[0, 0] += 1e-3
    changed.graph.initializer[0].CopyFrom(numpy_helper.from_array(array, "w0"))
    assert model_hash(changed) not in hashes


def test_hash_reads_no_whole_model_proto(chain_path, monkeypatch):
    """The hash streams weights: serializing a proto with weights inside would fail over 2 GB."""
    model = load_model(chain_path)
    real = onnx.ModelProto.SerializeToString

    def no_weights_inside(self, **kwargs):
        assert all(len(t.raw_data) < 1024 for t in self.graph.initializer), "a proto with the weights was serialized"
        return real(self, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", no_weights_inside)
    assert len(model_hash(model)) == 64


def test_sessions_map_the_weights_file_instead_of_copying(chain_path, small_is_large):
    """The skeleton a session is built from carries no weights: it points onnxruntime at the file."""
    model = load_model(chain_path)
    source = large.session_input(model)
    assert len(source.model) < 2048 and source.names == [] and source.folder == str(chain_path.parent)
    skeleton = onnx.ModelProto.FromString(source.model)
    locations = {t.name: dict((e.key, e.value) for e in t.external_data) for t in skeleton.graph.initializer
                 if t.data_location == TensorProto.EXTERNAL}
    assert {loc["location"] for loc in locations.values()} == {"chain.onnx.data"}
    x = np.random.default_rng(0).standard_normal((4, HIDDEN)).astype(np.float32)
    np.testing.assert_array_equal(ort_engine.build(model).run({"x": x})["y"], outputs_from_file(chain_path, x))


def test_arrays_a_pass_made_are_handed_over_as_ort_values(small_is_large):
    model = ir.from_proto(chain_model())  # weights in memory, in no file
    source = large.session_input(model)
    assert source.folder is None and sorted(source.names) == ["w0", "w1", "w2"]
    x = np.random.default_rng(0).standard_normal((4, HIDDEN)).astype(np.float32)
    plain = ort.InferenceSession(chain_model().SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(ort_engine.build(model).run({"x": x})["y"], plain.run(None, {"x": x})[0])


def test_chunks_read_a_file_weight_without_mapping_it(chain_path, monkeypatch):
    model = load_model(chain_path)
    tensor = model.graph.initializers["w1"].const_value
    monkeypatch.setattr(large, "CHUNK_BYTES", 1000)  # 250 floats: the weight comes in 10 pieces
    pieces = [chunk.copy() for chunk in large.chunks(tensor)]
    assert len(pieces) == 10 and tensor.raw is None  # read, not mapped
    np.testing.assert_array_equal(np.concatenate(pieces), numpy_helper.to_array(chain_model().graph.initializer[2]).ravel())


@pytest.mark.parametrize("passes", ["simplify", "fp16", "int8"])
def test_every_pass_takes_the_large_path_and_matches_the_ordinary_one(tmp_path, chain_path, passes, monkeypatch):
    calib = calib_file(tmp_path)
    shortcuts = {"simplify": {}, "fp16": {"fp16": Fp16Options(), "target": "cuda"},
                 "int8": {"int8": Int8Options(), "calib": calib, "target": "cpu"}}[passes]
    inline = tmp_path / "inline.onnx"  # the same model with its weights inside: the ordinary path
    onnx.save(chain_model(), str(inline))
    assert not large.keeps_weights_detached(load_model(inline))
    ordinary = graphopt.optimize(inline, tmp_path / "ordinary.onnx", cache=False, **shortcuts)
    assert not (tmp_path / "ordinary.onnx.data").exists()

    monkeypatch.setattr(large, "LARGE_MODEL_BYTES", 1024)
    monkeypatch.setattr(large, "DETACH_FROM_BYTES", 1024)
    result = graphopt.optimize(chain_path, tmp_path / "big.onnx", cache=False, **shortcuts)

    assert result.passed and (tmp_path / "big.onnx.data").exists()
    onnx.checker.check_model(str(tmp_path / "big.onnx"), full_check=True)
    simplify_row = result.report.rows[0]
    assert any("onnxsim skipped" in note and "2 GB" in note for note in simplify_row.notes)
    x = np.random.default_rng(1).standard_normal((8, HIDDEN)).astype(np.float32)
    got, want = outputs_from_file(tmp_path / "big.onnx", x), outputs_from_file(tmp_path / "ordinary.onnx", x)
    if passes == "simplify":  # onnxsim ran on the ordinary path only: the same function, not the same graph
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # same weights, same conversion rule, same graph
        np.testing.assert_array_equal(got, want)
        assert [r.status for r in result.report.rows] == [r.status for r in ordinary.report.rows]
    assert result.report.output_hash == model_hash(load_model(tmp_path / "big.onnx"))


def test_bf16_on_the_large_path(tmp_path, chain_path, small_is_large):
    result = graphopt.optimize(chain_path, tmp_path / "bf16.onnx", cache=False, target="cuda",
                               fp16=Fp16Options(precision="bf16"))
    proto = onnx.load(str(tmp_path / "bf16.onnx"), load_external_data=False)
    assert {t.data_type for t in proto.graph.initializer if t.name.startswith("w")} == {TensorProto.BFLOAT16}
    assert result.passed


def test_large_results_over_the_cap_are_not_cached(tmp_path, chain_path, small_is_large, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX", "1KB")
    result = graphopt.optimize(chain_path, tmp_path / "out.onnx", cache_dir=tmp_path / "cache")
    assert any("not cached" in note and "cache cap" in note for note in result.report.rows[0].notes)
    assert not list((tmp_path / "cache").glob("??/*.onnx"))


def test_saved_large_model_round_trips(tmp_path, chain_path, small_is_large):
    model = load_model(chain_path)
    out = save_model(model, tmp_path / "copy.onnx")
    assert (tmp_path / "copy.onnx.data").exists()
    assert model_hash(load_model(out)) == model_hash(model)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("passes", ["simplify", "fp16", "int8"])
def test_no_proto_with_the_weights_inside_is_ever_serialized(tmp_path, chain_path, passes, small_is_large,
                                                             monkeypatch):
    """protobuf's 2 GB limit, simulated: serializing any proto that carries more than the (lowered)
    limit of weight bytes fails, as it does for a real > 2 GB model (tensors of 16 bytes or more
    are detached, so the small ones the passes write cannot add up past the limit)."""
    monkeypatch.setattr(large, "DETACH_MIN_BYTES", 16)
    real = onnx.ModelProto.SerializeToString

    def limited(self, **kwargs):
        inside = sum(len(t.raw_data) + 4 * len(t.float_data) for t in self.graph.initializer)
        if inside > large.LARGE_MODEL_BYTES:
            raise ValueError(f"EncodeError (simulated): a proto with {inside} bytes of weights was serialized")
        return real(self, **kwargs)

    monkeypatch.setattr(onnx.ModelProto, "SerializeToString", limited)
    shortcuts = {"simplify": {}, "fp16": {"fp16": Fp16Options(), "target": "cuda"},
                 "int8": {"int8": Int8Options(), "calib": calib_file(tmp_path), "target": "cpu"}}[passes]
    result = graphopt.optimize(chain_path, tmp_path / "out.onnx", **shortcuts)
    assert result.passed and result.output_path is not None
    assert [r.status for r in result.report.rows] == ["unchanged" if passes == "simplify" else "unchanged",
                                                      *(["applied"] if passes != "simplify" else [])]


@pytest.mark.parametrize("shortcut", [{}, {"fp16": True, "target": "cuda"}])
def test_a_model_that_came_with_external_data_is_written_with_it(tmp_path, chain_path, shortcut):
    """The layout the user gave, whatever the pass (default thresholds)."""
    result = graphopt.optimize(chain_path, tmp_path / "out.onnx", **shortcut)
    assert result.passed and (tmp_path / "out.onnx.data").exists()
    onnx.checker.check_model(str(tmp_path / "out.onnx"), full_check=True)
    x = np.random.default_rng(2).standard_normal((4, HIDDEN)).astype(np.float32)
    np.testing.assert_allclose(outputs_from_file(tmp_path / "out.onnx", x), outputs_from_file(chain_path, x),
                               rtol=2e-2, atol=2e-2)
