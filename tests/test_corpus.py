"""The model corpus (tools/corpus.py): a fixed fast subset in the default suite, the whole corpus with
``-m corpus``. Every run must end valid and within tolerance of the ONNX test data's expected outputs,
or refused in one line; never a FAILURE."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import corpus  # noqa: E402


@pytest.fixture(scope="module")
def fast_entries():
    entries = corpus.load_entries(fast=True)
    assert {e.name for e in entries} == set(corpus.FAST_SUBSET), "the fast subset lost a model"
    return entries


def test_fast_subset_never_fails(fast_entries):
    runs = [corpus.run_one(entry, pass_name) for entry in fast_entries for pass_name in corpus.PASSES]
    summary = corpus.summarize(runs, list(corpus.PASSES))
    assert summary["failures"] == [], corpus.render(summary)
    rates = {name: s["valid %"] for name, s in summary["passes"].items()}
    assert rates["simplify"] == 100.0 and rates["fp16"] == 100.0, corpus.render(summary)
    # int8 has weights to quantize only in the conv / linear models of the subset; the rest refuse in one line
    int8_valid = {r.name for r in runs if r.pass_name == "int8" and r.status == "valid"}
    assert {"pytorch-converted/test_Conv2d", "pytorch-converted/test_Linear", "registry_digits-cnn"} <= int8_valid
    refused = [r for r in runs if r.status == "refused"]
    assert all("\n" not in r.reason and r.reason for r in refused)


def test_judge_catches_an_out_of_tolerance_output():
    import numpy as np

    expected = [np.array([1.0, 2.0, 3.0], np.float32)]
    assert corpus.compare(expected, [expected[0] + 1e-4], 1e-3, 1e-5) is None
    assert "max |Δ|" in corpus.compare(expected, [expected[0] + 0.5], 1e-3, 1e-5)
    assert "values differ" in corpus.compare([np.array([1, 2])], [np.array([1, 3])], 1e-3, 1e-5)
    assert "cosine" in corpus.compare(expected, [-expected[0]], 0, 0, min_cosine=0.99)


@pytest.mark.corpus
def test_whole_corpus_never_fails():
    entries = corpus.load_entries()
    runs = corpus.run_all(entries, list(corpus.PASSES), jobs=2, timeout=300, progress=False)
    summary = corpus.summarize(runs, list(corpus.PASSES))
    assert summary["failures"] == [], corpus.render(summary)
    assert summary["passes"]["simplify"]["valid %"] >= 95.0
    assert summary["passes"]["fp16"]["valid %"] >= 95.0
