"""The pass-result cache: size cap, least-recently-used eviction, ``graphopt cache info|clear``."""

from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir
import pytest
from click.testing import CliRunner

from graphopt.cache import PassCache, parse_size
from graphopt.cli import main
from graphopt.errors import InputError


def weights_model(values: int, seed: int) -> ir.Model:
    """y = x + w with ``values`` float32 weights (4 × values bytes)."""
    w = ir.Value(name="w", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([values]),
                 const_value=ir.tensor(np.random.default_rng(seed).random(values, dtype=np.float32), name="w"))
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([values]))
    add = ir.node("Add", [x, w], name="add")
    add.outputs[0].name = "y"
    add.outputs[0].type, add.outputs[0].shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape([values])
    graph = ir.Graph([x], [add.outputs[0]], nodes=[add], initializers=[w], opset_imports={"": 17})
    return ir.Model(graph, ir_version=8)


@pytest.mark.parametrize(("text", "size"), [("2GB", 2 * 1024**3), ("500MB", 500 * 1024**2), ("1.5g", 3 * 1024**3 // 2),
                                            ("0", 0), ("4096", 4096), ("10 KiB", 10240)])
def test_parse_size(text, size):
    assert parse_size(text) == size


def test_parse_size_refuses_junk():
    with pytest.raises(InputError, match="cannot read 'lots'"):
        parse_size("lots")


def test_least_recently_used_results_go_first(tmp_path):
    earlier_run = PassCache(tmp_path, max_bytes=30_000)  # room for two 10 KB results, not three
    for i, key in enumerate(["aa01", "bb02"]):
        earlier_run.put(key, weights_model(2500, seed=i), {"stats": {}})
        past = 1_000_000 + i
        for path in (tmp_path / key[:2]).iterdir():
            os.utime(path, (past, past))
    cache = PassCache(tmp_path, max_bytes=30_000)
    assert cache.get("aa01") is not None  # read: now the most recently used
    cache.put("cc03", weights_model(2500, seed=3), {"stats": {}})
    assert {e.key for e in cache.entries()} == {"aa01", "cc03"}
    assert cache.get("bb02") is None
    assert sum(e.size for e in cache.entries()) <= 30_000


def test_results_of_the_running_pipeline_are_never_evicted(tmp_path):
    """A result read from the cache may still be read later in the run (its weights lazily)."""
    writer = PassCache(tmp_path, max_bytes=30_000)
    writer.put("aa01", weights_model(2500, seed=0), {})
    run = PassCache(tmp_path, max_bytes=30_000)
    assert run.get("aa01") is not None
    run.put("bb02", weights_model(2500, seed=1), {})
    run.put("cc03", weights_model(2500, seed=2), {})  # over the cap: only what this run used is left
    assert {e.key for e in run.entries()} == {"aa01", "bb02", "cc03"}
    PassCache(tmp_path, max_bytes=30_000).evict()  # the next run evicts the least recently used
    assert {e.key for e in run.entries()} == {"bb02", "cc03"}


def test_a_result_larger_than_the_cap_is_not_cached(tmp_path):
    cache = PassCache(tmp_path, max_bytes=1000)
    note = cache.put("dd04", weights_model(2500, seed=0), {})
    assert note is not None and "larger than the cache cap" in note
    assert cache.entries() == []


def test_cap_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX", "500MB")
    assert PassCache(tmp_path).max_bytes == 500 * 1024**2
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX", "many")
    with pytest.raises(InputError, match="GRAPHOPT_CACHE_MAX"):
        PassCache(tmp_path)


def test_cache_info_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHOPT_CACHE_MAX", "2GB")
    cache = PassCache(tmp_path)
    for i, key in enumerate(["aa01", "bb02", "cc03"]):
        cache.put(key, weights_model(2500, seed=i), {})
    size = cache.size()
    runner = CliRunner()
    info = runner.invoke(main, ["cache", "info", "--cache-dir", str(tmp_path)])
    assert info.exit_code == 0, info.output
    assert f"location: {tmp_path}" in info.output
    assert "entries:  3 pass results" in info.output
    assert "cap:      2.0 GB ($GRAPHOPT_CACHE_MAX" in info.output
    assert f"size:     {size / 1024:.1f} KB" in info.output
    cleared = runner.invoke(main, ["cache", "clear", "--cache-dir", str(tmp_path)])
    assert cleared.exit_code == 0, cleared.output
    assert f"removed 3 pass results, freed {size / 1024:.1f} KB" in cleared.output
    assert cache.entries() == [] and cache.size() == 0


def test_a_change_to_graphopt_sources_changes_every_key(monkeypatch):
    """A git checkout or an editable install keeps its version number across commits: the key must not."""
    import graphopt.cache

    before = PassCache.key("model-hash", {"pass": "simplify"}, {})
    assert PassCache.key("model-hash", {"pass": "simplify"}, {}) == before
    monkeypatch.setattr(graphopt.cache, "source_fingerprint", lambda: "another source tree")
    assert PassCache.key("model-hash", {"pass": "simplify"}, {}) != before
