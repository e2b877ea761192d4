"""Inputs to time an engine with: real samples when given, else deterministic probe inputs.

Shapes follow :func:`graphopt.engines.shapes.feed_shapes_for` (the batch axis = the batch being timed,
other dynamic dims from the shape profile's OPT, the data, or the probe size). Real data is taken from
its first samples, repeated when the batch is larger than the data set. A model whose inputs share no
batch axis (:func:`graphopt.data.batch_axis`) is timed one feed at a time: batch 1 = one feed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphopt.data import DataSet, InputSpec, batch_axis, leading_dims, probe_data
from graphopt.engines.shapes import Profile, feed_shapes_for
from graphopt.errors import InputError


def make_feeds(specs: Sequence[InputSpec], batch: int, profile: Profile | None = None,
               data: DataSet | None = None) -> dict[str, np.ndarray]:
    """One feed dict of ``batch`` samples for every input in ``specs``."""
    profile = profile or {}
    axis = batch_axis(specs)
    if axis.kind == "fixed" and axis.size != batch:
        raise InputError(f"the model takes a fixed batch of {axis.size} (its inputs' leading dim); "
                         f"it cannot be timed at batch {batch} (use --batch {axis.size})")
    if axis.stacked and batch != 1:
        raise InputError(f"the model's inputs share no batch axis (leading dims {leading_dims(specs)}): one feed "
                         f"is one sample, so it is timed at batch 1 only, not {batch}")
    if data is not None:
        missing = [spec.name for spec in specs if spec.name not in data.inputs]
        if missing:
            raise InputError(f"data {data.source} has no input {missing[0]!r}")
        if data.stacked:
            return {spec.name: np.ascontiguousarray(data.inputs[spec.name][0, ...]) for spec in specs}
        feeds = {}
        for spec in specs:
            array = data.inputs[spec.name]
            reps = -(-batch // len(array))
            feeds[spec.name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch])
        return feeds
    probe = probe_data(list(specs), count=batch, dim_overrides=feed_shapes_for(specs, batch, profile))
    return {name: np.ascontiguousarray(array) for name, array in probe.feed(0, batch).items()}


def cast_to_inputs(feeds: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """``feeds`` with float arrays cast to the float type each input declares (an fp16 model without
    keep-io-types takes float16)."""
    out = dict(feeds)
    for spec in specs:
        array = out.get(spec.name)
        if array is not None and array.dtype.kind == "f" and spec.dtype.kind == "f" and array.dtype != spec.dtype:
            out[spec.name] = array.astype(spec.dtype)
    return out
