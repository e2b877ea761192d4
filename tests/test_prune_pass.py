"""The prune pass and its CLI flags: modes, refusals, order with int8, the report and the accuracy gate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import helper

import graphopt
from graphopt.cli import main
from graphopt.errors import InputError, PreconditionFailed
from graphopt.manager import check_order
from graphopt.model_io import initializer_bytes, load_model
from graphopt.passes.int8 import Int8Pass
from graphopt.passes.prune import PruneOptions, PrunePass
from graphopt.sparsity import SPARSITY_2_4_KEY
from tests.prune_graphs import model, run, weights

RNG = np.random.default_rng(11)


def convnet() -> onnx.ModelProto:
    """Conv(3→16) → Relu → Conv(16→32) → Relu → Conv(32→16) → GlobalAveragePool → Flatten → Gemm(16→10)."""
    return model([
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], name="conv3"),
        helper.make_node("GlobalAveragePool", ["c3"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1, name="fc"),
    ], [("x", ["N", 3, 8, 8])], [("y", ["N", 10])],
        {"w1": weights((16, 3, 3, 3), 1), "b1": weights(16, 2), "w2": weights((32, 16, 3, 3), 3),
         "b2": weights(32, 4), "w3": weights((16, 32, 1, 1), 5), "fc": weights((10, 16), 6)})


def save(tmp_path, proto, name="m.onnx"):
    path = tmp_path / name
    onnx.save(proto, str(path))
    return path


def npz(tmp_path, name="data.npz", n=32, labels=False):
    path = tmp_path / name
    arrays = {"x": RNG.standard_normal((n, 3, 8, 8)).astype(np.float32)}
    if labels:
        arrays["labels"] = RNG.integers(0, 10, n).astype(np.int64)
    np.savez(path, **arrays)
    return path


def invoke(*args):
    return CliRunner().invoke(main, ["optimize", *map(str, args), "--no-cache", "--target", "cpu"])


def test_channel_prune_through_optimize_reports_groups(tmp_path):
    out = tmp_path / "out.onnx"
    result = graphopt.optimize(save(tmp_path, convnet()), out, prune=0.5, target="cpu", cache=False)
    row = next(r for r in result.report.rows if r.name == "prune")
    assert row.status == "applied" and row.stats["mode"] == "channel" and row.stats["exact_check"] == "passed"
    assert [g["channels"] for g in row.stats["groups"]] == ["32→16", "16→8"]
    assert "first layer" in " ".join(s["reason"] for s in row.stats["left_alone"])
    assert "×0.5" in row.stats["params"] or "×0.4" in row.stats["params"]
    pruned = onnx.load(str(out))
    shapes = {t.name.split("_pruned")[0]: list(t.dims) for t in pruned.graph.initializer}
    assert shapes["w2"] == [16, 16, 3, 3] and shapes["w3"] == [8, 16, 1, 1] and shapes["fc"] == [10, 8]


def test_prune_zero_through_the_pass_changes_nothing():
    proto = convnet()
    result = PrunePass(PruneOptions(amount=0.0))(ir.from_proto(proto))
    assert not result.modified
    assert ir.to_proto(result.model).SerializeToString() == ir.to_proto(ir.from_proto(proto)).SerializeToString()


def test_quantized_model_is_refused():
    proto = model([
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("Conv", ["dq", "w"], ["y"]),
    ], [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])],
        {"s": np.array(0.1, np.float32), "z": np.array(0, np.uint8), "w": weights((4, 3, 1, 1), 1)})
    with pytest.raises(PreconditionFailed, match="already quantized"):
        PrunePass(PruneOptions(amount=0.5)).requires(ir.from_proto(proto))


def test_prune_must_run_before_int8():
    with pytest.raises(InputError, match="cannot run after 'int8'"):
        check_order([Int8Pass(), PrunePass()])
    check_order([PrunePass(), Int8Pass()])


@pytest.mark.parametrize("bad, match", [
    (dict(amount=1.0), r"\[0, 1\)"),
    (dict(mode="3:2"), "0 < N < M"),
    (dict(mode="blocks"), "N:M pattern"),
    (dict(store="sparse"), "unstructured or 2:4"),
    (dict(scope="global"), "unstructured only"),
])
def test_options_are_checked(bad, match):
    with pytest.raises(InputError, match=match):
        PruneOptions(**bad)


def test_prune_and_int8_in_one_command_compound(tmp_path):
    source = save(tmp_path, convnet())
    pruned, both = tmp_path / "p.onnx", tmp_path / "pq.onnx"
    calib = npz(tmp_path, "calib.npz")
    assert invoke(source, "-o", pruned, "--prune", "0.5").exit_code == 0
    result = invoke(source, "-o", both, "--prune", "0.5", "--int8", "--calib-data", calib)
    assert result.exit_code == 0, result.output
    ops = {n.op_type for n in onnx.load(str(both)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    sizes = [initializer_bytes(load_model(p)) for p in (source, pruned, both)]
    assert sizes[2] < 0.4 * sizes[1] and sizes[1] < 0.6 * sizes[0]


def test_2_4_mode_and_sparse_store_from_the_cli(tmp_path):
    big = model([
        helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["b"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["b"], ["rb"]),
        helper.make_node("Conv", ["rb", "w3"], ["y"]),
    ], [("x", ["N", 3, 8, 8])], [("y", ["N", 4, 8, 8])],
        {"w1": weights((32, 3, 3, 3), 1), "w2": weights((64, 32, 3, 3), 2), "w3": weights((4, 64, 1, 1), 3)})
    source, out24, out_sparse = save(tmp_path, big), tmp_path / "s24.onnx", tmp_path / "sp.onnx"
    result = invoke(source, "-o", out24, "--prune", "0.5", "--prune-mode", "2:4", "--json")
    assert result.exit_code == 0, result.output
    meta = {p.key: p.value for p in onnx.load(str(out24)).metadata_props}
    assert json.loads(meta[SPARSITY_2_4_KEY]) == ["w2"]
    result = invoke(source, "-o", out_sparse, "--prune", "0.8", "--prune-mode", "unstructured",
                    "--prune-store", "sparse", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    stored = onnx.load(str(out_sparse))
    assert [s.values.name for s in stored.graph.sparse_initializer] == ["w2"]
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    report = json.loads((tmp_path / "r.json").read_text())
    prune_row = next(r for r in report["rows"] if r["name"] == "prune")
    assert prune_row["stats"]["stored_sparse"] == 1 and "dense kernels" in " ".join(prune_row["notes"])
    assert run(stored, {"x": x})[0].shape == (2, 4, 8, 8)


@pytest.mark.parametrize("args, match", [
    (["--prune-mode", "2:4"], "only apply to pruning; add --prune"),
    (["--prune", "0.5", "--prune-store", "sparse"], "unstructured or 2:4"),
    (["--prune", "0.5", "--prune-skip", "nope"], "no node or weight named 'nope'"),
    (["--prune", "1.5"], "1.5"),
])
def test_cli_refusals(tmp_path, args, match):
    result = invoke(save(tmp_path, convnet()), "-o", tmp_path / "o.onnx", *args)
    assert result.exit_code == 2 and match in result.output, result.output
    assert not (tmp_path / "o.onnx").exists()


def test_missed_budget_points_to_distillation(tmp_path):
    result = invoke(save(tmp_path, convnet()), "-o", tmp_path / "o.onnx", "--prune", "0.9", "--prune-skip", "none",
                    "--eval-data", npz(tmp_path, labels=True), "--max-accuracy-drop", "0", "--metric", "agreement")
    assert result.exit_code == 1, result.output
    assert "accuracy budget missed" in result.output and "--distill" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_pipeline_file_builds_the_same_pass(tmp_path):
    from graphopt.pipeline import Pipeline

    path = tmp_path / "p.yaml"
    path.write_text('passes:\n  - prune:\n      amount: 0.3\n      mode: "2:4"\n      skip: [conv2]\n')
    pipeline = Pipeline.from_file(path)
    assert pipeline.passes == [PrunePass(PruneOptions(amount=0.3, mode="2:4", skip=("conv2",)))]
