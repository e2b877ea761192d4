"""Inputs to time an engine with: real samples when given, else deterministic probe inputs.

Shapes follow :func:`graphopt.engines.shapes.feed_shape` (batch dim = the batch being timed, other
dynamic dims from the shape profile's OPT, the data, or the probe size). Real data is taken from its
first samples, repeated when the batch is larger than the data set.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from graphopt.data import DataSet, InputSpec, probe_data
from graphopt.engines.shapes import Profile, feed_shape
from graphopt.errors import InputError


def make_feeds(specs: Sequence[InputSpec], batch: int, profile: Profile | None = None,
               data: DataSet | None = None) -> dict[str, np.ndarray]:
    """One feed dict of ``batch`` samples for every input in ``specs``."""
    profile = profile or {}
    for spec in specs:
        fixed = spec.static_batch
        if fixed is not None and fixed != batch:
            raise InputError(f"input {spec.name!r} has a fixed batch of {fixed} {spec.describe()}; "
                             f"it cannot be timed at batch {batch} (use --batch {fixed})")
    if data is not None:
        feeds = {}
        for spec in specs:
            if spec.name not in data.inputs:
                raise InputError(f"data {data.source} has no input {spec.name!r}")
            array = data.inputs[spec.name]
            reps = -(-batch // len(array))
            feeds[spec.name] = np.ascontiguousarray(np.concatenate([array] * reps)[:batch] if reps > 1 else array[:batch])
        return feeds
    shapes = {spec.name: feed_shape(spec, batch, profile) for spec in specs}
    probe = probe_data(list(specs), count=batch, dim_overrides=shapes)
    return {name: np.ascontiguousarray(array[:batch]) for name, array in probe.inputs.items()}


def cast_to_inputs(feeds: dict[str, np.ndarray], specs: Sequence[InputSpec]) -> dict[str, np.ndarray]:
    """``feeds`` with float arrays cast to the float type each input declares (an fp16 model without
    keep-io-types takes float16)."""
    out = dict(feeds)
    for spec in specs:
        array = out.get(spec.name)
        if array is not None and array.dtype.kind == "f" and spec.dtype.kind == "f" and array.dtype != spec.dtype:
            out[spec.name] = array.astype(spec.dtype)
    return out
