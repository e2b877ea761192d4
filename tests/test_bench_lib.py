"""The benchmark harness (tools/bench.py, tools/bench_lib.py) on tiny inline models."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools import bench
from tools.bench_lib import (
    argmax_agreement,
    feeds_for,
    graph_facts,
    interleaved_latency,
    markdown_table,
    measure_quality,
)


def _classifier(path, with_cast: bool = False, hidden: int = 16) -> None:
    """x (N, 8) → Gemm 8→hidden → Relu → Gemm hidden→4 → logits, seeded weights."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, hidden)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, 4)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["logits" if not with_cast else "l0"]),
    ]
    if with_cast:
        nodes.append(helper.make_node("Cast", ["l0"], ["logits"], to=TensorProto.FLOAT))
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


@pytest.fixture
def tiny_case(tmp_path):
    import onnxruntime as ort

    model = tmp_path / "tiny.onnx"
    _classifier(model, hidden=512)  # weights dominate the file, so size ratios mean something
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((16, 8)).astype(np.float32)
    evaluation = rng.standard_normal((40, 8)).astype(np.float32)
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"x": evaluation})[0]
    labels = logits.argmax(axis=1).astype(np.int64)
    labels[:4] = (labels[:4] + 1) % 4  # fp32 accuracy 90 %, so accuracy is not trivially 100 %
    np.savez(tmp_path / "calib.npz", x=calib)
    np.savez(tmp_path / "eval.npz", x=evaluation, labels=labels)
    return bench.Case("tiny", model, tmp_path / "calib.npz", tmp_path / "eval.npz", "top1-labels")


def test_argmax_agreement_counts_positions_of_sequences():
    ref = np.zeros((2, 3, 5), np.float32)
    ref[..., 1] = 1.0  # every position picks class 1
    cand = ref.copy()
    cand[1, 2, 4] = 2.0  # one of the 6 positions now picks class 4
    assert argmax_agreement(ref, cand) == pytest.approx(5 / 6)
    assert argmax_agreement(ref[:, 0], cand[:, 2]) == pytest.approx(0.5)  # (N, C): per sample
    with pytest.raises(ValueError, match="shapes differ"):
        argmax_agreement(ref, cand[:1])


def test_measure_quality_by_check():
    rng = np.random.default_rng(0)
    ref = {"y": rng.standard_normal((10, 3)).astype(np.float32)}
    labels = ref["y"].argmax(axis=1)
    worse = {"y": ref["y"].copy()}
    worse["y"][0] = -worse["y"][0]  # sample 0 now picks another class
    acc = measure_quality("top1-labels", ref, worse, labels)
    assert acc.metric == "accuracy" and acc.reference == 1.0
    assert acc.value == pytest.approx(0.9) and acc.drop_points == pytest.approx(10.0)
    cos = measure_quality("cosine", ref, worse)
    assert cos.value == pytest.approx(0.8)  # one sample with cosine −1 among ten
    seq = {"y": rng.standard_normal((2, 4, 6)).astype(np.float32)}
    same = measure_quality("argmax-agreement", seq, {"y": seq["y"].copy()})
    assert same.value == 1.0 and same.per_output["y"]["ctc_text_match"] == 1.0
    classifier = measure_quality("argmax-agreement", ref, worse)
    assert classifier.value == pytest.approx(0.9) and "ctc_text_match" not in classifier.per_output["y"]
    bad = {"y": ref["y"].copy()}
    bad["y"][3, 1] = np.nan
    nan = measure_quality("argmax-agreement", ref, bad)
    assert not nan.finite and math.isnan(nan.value) and nan.drop_points == 100.0
    with pytest.raises(ValueError, match="lacks output"):
        measure_quality("cosine", ref, {"z": ref["y"]})


def test_interleaved_latency_rotates_and_blocks():
    order = []
    runners = {name: (lambda n: lambda: order.append(n))(name) for name in "abc"}
    timings = interleaved_latency(runners, runs=4, warmup=2, min_sample_s=0.0)
    assert {k: len(v) for k, v in timings.items()} == {"a": 4, "b": 4, "c": 4}
    timed = order[6:]  # after 2 warm-up calls each
    assert timed[:3] == ["a", "b", "c"] and timed[3:6] == ["b", "c", "a"] and timed[6:9] == ["c", "a", "b"]
    calls = []
    interleaved_latency({"x": lambda: calls.append(1)}, runs=3, warmup=1, min_sample_s=1e-3)
    assert len(calls) > 1 + 3  # sub-microsecond calls are timed in blocks


def test_graph_facts_and_feeds(tmp_path):
    import onnxruntime as ort
    from onnxconverter_common import float16

    path = tmp_path / "m.onnx"
    _classifier(path, with_cast=True)
    facts = graph_facts(path)
    assert facts.nodes == 4 and facts.casts == 1 and facts.op_counts["Gemm"] == 2
    assert facts.file_bytes == path.stat().st_size
    plain, half = tmp_path / "plain.onnx", tmp_path / "half.onnx"
    _classifier(plain)
    onnx.save(float16.convert_float_to_float16(onnx.load(str(plain)), keep_io_types=False), str(half))
    session = ort.InferenceSession(str(half), providers=["CPUExecutionProvider"])
    feeds = feeds_for(session, {"x": np.ones((2, 8), np.float32)})
    assert feeds["x"].dtype == np.float16
    session.run(None, feeds)


def test_markdown_table_aligns_numbers():
    table = markdown_table(["name", "ms"], [["a", "1.5"], ["b", "NaN"]])
    assert table.splitlines()[1] == "|---|---:|"


def test_bench_model_end_to_end(tiny_case, tmp_path):
    variants = ["fp32", "graphopt-simplify", "onnxsim", "ort-int8-tuned", "occ-fp16", "graphopt-bf16"]
    section = bench.bench_model(tiny_case, variants, tmp_path, runs=3, warmup=1, threads=1)
    rows = {row["variant"]: row for row in section["rows"]}
    assert list(rows) == variants
    base = rows["fp32"]
    assert base["latency_ratio"] == 1.0 and base["size_ratio"] == 1.0 and base["casts_added"] == 0
    assert base["quality"]["value"] == pytest.approx(0.9) and base["quality"]["drop_points"] == 0.0
    for name in ("graphopt-simplify", "onnxsim", "ort-int8-tuned", "occ-fp16"):
        row = rows[name]
        assert row["status"] == "ok", row.get("reason")
        assert len(row["latency_runs_ms"]) == 3 and row["latency_ms"] > 0
        assert row["quality"]["finite"]
    assert rows["occ-fp16"]["size_ratio"] < 0.6 and rows["occ-fp16"]["casts_added"] >= 2
    assert rows["ort-int8-tuned"]["op_counts"].get("QuantizeLinear", 0) > 0
    assert rows["ort-int8-tuned"]["details"]["options"]["activation_type"] == "QUInt8"
    assert rows["onnxsim"]["quality"]["relative_error"] < 1e-5
    assert rows["graphopt-bf16"]["status"] in ("ok", "skipped")
    markdown = bench.render_markdown({"meta": {"date": "d", "machine": {"processor": "p", "cpus": 2},
                                               "versions": {}, "threads": 1, "batch": 1, "runs": 3,
                                               "warmup": 1}, "models": {"tiny": section}})
    assert "| occ-fp16 |" in markdown and "accuracy 90.00%" in markdown


def test_cli_writes_json_and_markdown(tmp_path, capsys):
    assert bench.main(["--models", "digits-mlp", "--variants", "fp32,onnxsim", "--runs", "2", "--warmup", "1",
                       "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "bench.json").read_text())
    rows = result["models"]["digits-mlp"]["rows"]
    assert [r["variant"] for r in rows] == ["fp32", "onnxsim"]
    assert "## digits-mlp" in (tmp_path / "bench.md").read_text()
    assert "| onnxsim |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="unknown variant"):
        bench.main(["--variants", "nope", "--out", str(tmp_path)])


def test_threads_list_times_every_variant_at_each_count(tiny_case, tmp_path):
    section = bench.bench_model(tiny_case, ["fp32", "onnxsim"], tmp_path, runs=2, warmup=1, threads=[1, 2])
    for row in section["rows"]:
        assert set(row["latency"]) == {"1", "2"} and row["latency_ms"] == row["latency"]["1"]["ms"]
    assert section["rows"][0]["latency"]["2"]["ratio"] == 1.0
    meta = {"date": "d", "machine": {"processor": "p", "cpus": 2}, "versions": {}, "threads": [1, 2], "batch": 1,
            "runs": 2, "warmup": 1}
    markdown = bench.render_markdown({"meta": meta, "models": {"tiny": section}})
    assert "× (1 thr)" in markdown and "× (2 thr)" in markdown
    assert bench._thread_list("1,2,1") == [1, 2]


def test_text_columns_show_cer_and_agreement_with_fp32():
    row = {"variant": "v", "status": "ok", "file_bytes": 1e6, "size_ratio": 1.0, "latency_ms": 2.0, "latency_ratio": 1.0,
           "quality": {"metric": "argmax-agreement", "value": 0.99, "drop_points": 1.0, "relative_error": 0.1,
                       "finite": True, "per_output": {}},
           "text": {"cer": 0.0426, "text_equals_fp32": 0.953, "lines": 512},
           "nodes": 3, "casts_added": 0, "convert_s": 1.0}
    header = bench._header([1], texts=True)
    cells = dict(zip(header, bench._table_row(row, [1], texts=True)))
    assert cells["CER %"] == "4.26" and cells["text = fp32"] == "95.3%"
    assert len(bench._table_row(row, [1], texts=True)) == len(header)


def test_ort_tuned_upgrades_an_old_opset_first(tmp_path):
    model = onnx.helper.make_model(
        onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                               [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                               [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])]),
        opset_imports=[onnx.helper.make_opsetid("", 11)])
    old, new = tmp_path / "old.onnx", tmp_path / "new.onnx"
    onnx.save(model, old)
    path, note = bench._ort_opset13(old, new)
    assert path == new and "opset 11" in note and onnx.load(str(new)).opset_import[0].version == 13
    assert bench._ort_opset13(new, tmp_path / "again.onnx") == (new, None)
