"""Streaming int8 calibration equals the one-shot computation on the same data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.data import DataSet
from graphopt.passes.int8.calibration import (
    HISTOGRAM_VALUES_PER_SAMPLE,
    RangeCollector,
    TensorHistogram,
    calibrate,
    entropy_threshold,
    percentile_threshold,
)

RNG = np.random.default_rng(1)


def _batches(array, size):
    return [array[i : i + size] for i in range(0, len(array), size)]


def test_minmax_streaming_equals_one_shot_exactly():
    data = RNG.standard_normal((100, 7)).astype(np.float32) * np.linspace(0.1, 9, 100)[:, None].astype(np.float32)
    streamed = RangeCollector("minmax")
    for part in _batches(data, 9):
        streamed.update({"t": part})
    assert streamed.ranges()["t"] == (float(data.min()), float(data.max()))


@pytest.mark.parametrize("bins", [64, 2048])
def test_histogram_streaming_equals_one_shot_when_range_grows(bins):
    # later batches have larger values: the grid must rescale several times while streaming
    data = (RNG.standard_normal((64, 50)) * np.geomspace(0.01, 100, 64)[:, None]).astype(np.float32)
    one_shot = TensorHistogram(bins)
    one_shot.update(data)
    streamed = TensorHistogram(bins)
    for part in _batches(data, 5):
        streamed.update(part)
    assert streamed.exponent == one_shot.exponent
    np.testing.assert_array_equal(streamed.counts, one_shot.counts)
    assert (streamed.min, streamed.max) == (one_shot.min, one_shot.max)
    assert streamed.counts.sum() == data.size


def test_histograms_of_two_halves_merge_into_the_one_shot_histogram():
    data = (RNG.standard_normal(4000) * 3).astype(np.float32)
    data[:10] = 0.0
    left, right = TensorHistogram(), TensorHistogram()
    left.update(data[:1000] * np.float32(0.001))  # very different scales on the two sides
    right.update(data[1000:])
    scaled = np.concatenate([data[:1000] * np.float32(0.001), data[1000:]])
    one_shot = TensorHistogram()
    one_shot.update(scaled)
    left.merge(right)
    np.testing.assert_array_equal(left.counts, one_shot.counts)
    assert left.exponent == one_shot.exponent


def test_all_zero_batches_before_the_grid_exists_are_counted():
    state = TensorHistogram(16)
    state.update(np.zeros(10, np.float32))
    state.update(np.array([1.0, -2.0], np.float32))
    assert state.counts.sum() == 12 and state.counts[0] == 10


def test_percentile_and_entropy_clip_outliers_but_minmax_does_not():
    values = RNG.standard_normal(200_000).astype(np.float32)
    values[:3] = [60.0, -70.0, 80.0]
    state = TensorHistogram()
    state.update(values)
    assert state.range("minmax") == (-70.0, 80.0)
    pct_low, pct_high = state.range("percentile", 99.99)
    ent_low, ent_high = state.range("entropy")
    assert 3.0 < pct_high < 6.0 and pct_low == -pct_high
    assert 2.0 < ent_high < 20.0
    # percentile on a known histogram: 90 % of the mass is in the first 9 of 10 bins
    assert percentile_threshold(np.array([10] * 10), 1.0, 90.0) == 9.0
    assert entropy_threshold(np.array([5, 0, 3]), 0.5) == 1.5  # fewer bins than levels: keep everything


def _two_layer_model():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    w = numpy_helper.from_array(RNG.standard_normal((6, 5)).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, onnx.numpy_helper.to_array(w)


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_calibrate_over_batches_equals_single_batch(method):
    model, w = _two_layer_model()
    x = RNG.standard_normal((80, 6)).astype(np.float32)
    streamed = calibrate(model, DataSet({"x": x}), ["x", "h", "y"], method, batch_size=7)
    single = calibrate(model, DataSet({"x": x}), ["x", "h", "y"], method, batch_size=80)
    assert streamed.batches == 12 and single.batches == 1
    for name in ("x", "h", "y"):
        assert streamed.ranges[name] == pytest.approx(single.ranges[name], abs=0, rel=0)
    if method == "minmax":
        h = x @ w
        assert streamed.ranges["h"] == pytest.approx((h.min(), h.max()), rel=1e-6)
    assert streamed.settle.checked and not single.settle.checked


def test_settle_report_flags_a_range_that_keeps_growing():
    model, _ = _two_layer_model()
    x = RNG.standard_normal((64, 6)).astype(np.float32)
    x[-4:] *= 50  # the last samples widen every range a lot
    result = calibrate(model, DataSet({"x": x}), ["x", "h"], "minmax", batch_size=8)
    assert not result.settle.settled and result.settle.max_move > 0.5
    steady = calibrate(model, DataSet({"x": np.tile(x[:8], (8, 1, 1)).reshape(-1, 6)}), ["x", "h"], "minmax",
                       batch_size=8)
    assert steady.settle.settled and steady.settle.max_move == 0.0


def test_summaries_computed_in_the_model_equal_the_whole_arrays():
    """min / max / strided sample computed by the added graph nodes fold into exactly the state the
    whole activations give (stride 2: 38 400 values per sample > 2**15), whatever the batching."""
    from graphopt.calibration import stream_summaries, stream_tensors

    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 64, 200])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 64, 200])],
                              [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    data = DataSet({"x": (RNG.standard_normal((10, 3, 64, 200)) * np.geomspace(0.1, 10, 10)[:, None, None, None])
                    .astype(np.float32)})
    whole, summarised = RangeCollector("percentile"), RangeCollector("percentile")
    stream_tensors(model, data, ["x", "c", "y"], whole.update, batch_size=10)
    stream_summaries(model, data, ["x", "c", "y"], summarised.update, batch_size=3,
                     values_per_sample=HISTOGRAM_VALUES_PER_SAMPLE)
    for name in ("x", "c", "y"):
        a, b = whole.states[name], summarised.states[name]
        assert (a.min, a.max, a.exponent) == (b.min, b.max, b.exponent)
        np.testing.assert_array_equal(a.counts, b.counts)
    assert whole.states["c"].stride == 2 and whole.states["c"].counts.sum() == 10 * 4 * 64 * 100


def test_histogram_budget_per_sample_shrinks_with_more_samples_within_bounds():
    from graphopt.passes.int8.calibration import histogram_values_per_sample

    assert histogram_values_per_sample(64) == 2**15  # 2**22 / 64 = 2**16, capped
    assert histogram_values_per_sample(512) == 2**13
    assert histogram_values_per_sample(10**6) == 2**12
    assert histogram_values_per_sample(512) * 512 >= 2**22  # the tail of 99.999 % still holds ≥ 40 values


def test_collect_ranges_reduced_in_the_model_equal_numpy_on_every_float_tensor():
    """fp16's overflow check reads min/max of every float tensor, reduced inside onnxruntime."""
    from graphopt.calibration import collect_ranges

    model, w = _two_layer_model()
    x = (RNG.standard_normal((30, 6)) * 5).astype(np.float32)
    ranges = collect_ranges(model, DataSet({"x": x}), batch_size=7)
    h = x @ w
    for name, array in {"x": x, "h": h, "y": np.maximum(h, 0)}.items():
        assert (ranges[name].min, ranges[name].max) == pytest.approx((array.min(), array.max()), rel=1e-6)
        assert ranges[name].count == 5  # batches folded in
