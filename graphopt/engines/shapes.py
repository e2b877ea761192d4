"""Input shape ranges (optimization profiles) for engines with dynamic inputs.

A profile gives every dynamic input a ``MIN`` / ``OPT`` / ``MAX`` shape (TensorRT's optimization
profile; onnxruntime's TensorRT provider takes the same three). On the command line:
``--shapes name:MIN:OPT:MAX`` with dims joined by ``x`` (``input:1x3x224x224:8x3x224x224:32x3x224x224``);
``name:DIMS`` is shorthand for MIN = OPT = MAX. Several inputs: repeat the flag or separate entries
with commas. Rules checked against the model: the input exists, ranks agree, dims the model fixes
are kept, every dim is ≥ 1 and MIN ≤ OPT ≤ MAX dim by dim.

Without ``--shapes`` a profile is derived (:func:`derive_profile`): the batch axis (a symbolic leading
dim shared by every input, :func:`graphopt.data.batch_axis`) spans the batch sizes the caller will run
(``1 … max``, OPT the largest), every other dynamic dim is taken from the data (its size in one feed;
with no data, the probe size of :func:`graphopt.data.feed_shapes`, one size per dim name).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Sequence

from graphopt.data import DataSet, InputSpec, batch_axis, feed_shapes
from graphopt.errors import InputError

Dims = tuple[int, ...]
_DIMS = r"\d+(?:x\d+)*"
_ENTRY = re.compile(rf"^(?P<name>[^:]+):(?P<min>{_DIMS})(?::(?P<opt>{_DIMS}):(?P<max>{_DIMS}))?$")


@dataclasses.dataclass(frozen=True)
class ShapeRange:
    """The shapes one input may take: ``min ≤ opt ≤ max`` dim by dim."""

    min: Dims
    opt: Dims
    max: Dims

    def __post_init__(self) -> None:
        if not (len(self.min) == len(self.opt) == len(self.max)):
            raise InputError(f"shape profile {self.describe()}: MIN, OPT and MAX must have the same rank")

    def describe(self) -> str:
        return ":".join(_fmt(d) for d in (self.min, self.opt, self.max))

    def contains(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max))

    def to_dict(self) -> dict:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_dict(cls, raw: dict) -> ShapeRange:
        return cls(tuple(raw["min"]), tuple(raw["opt"]), tuple(raw["max"]))


Profile = dict[str, ShapeRange]


def parse_shapes(texts: Iterable[str] | None) -> Profile:
    """``--shapes`` values → ``{input: ShapeRange}`` (syntax in the module docstring)."""
    profile: Profile = {}
    for text in texts or ():
        for entry in filter(None, (part.strip() for part in text.split(","))):
            match = _ENTRY.match(entry)
            if match is None:
                raise InputError(f"--shapes expects name:MIN:OPT:MAX like input:1x3x224x224:8x3x224x224:32x3x224x224 "
                                 f"(or name:DIMS), got {entry!r}")
            name = match.group("name")
            low = _dims(match.group("min"))
            opt = _dims(match.group("opt")) if match.group("opt") else low
            high = _dims(match.group("max")) if match.group("max") else low
            if name in profile:
                raise InputError(f"--shapes gives input {name!r} twice")
            profile[name] = ShapeRange(low, opt, high)
    for name, shape_range in profile.items():
        _check_order(name, shape_range)
    return profile


def _dims(text: str) -> Dims:
    return tuple(int(d) for d in text.split("x"))


def _fmt(dims: Sequence[int]) -> str:
    return "x".join(map(str, dims))


def _check_order(name: str, shape_range: ShapeRange) -> None:
    if any(d < 1 for d in (*shape_range.min, *shape_range.opt, *shape_range.max)):
        raise InputError(f"--shapes {name}:{shape_range.describe()}: every dim must be ≥ 1")
    for axis, (lo, opt, hi) in enumerate(zip(shape_range.min, shape_range.opt, shape_range.max)):
        if not lo <= opt <= hi:
            raise InputError(f"--shapes {name}:{shape_range.describe()}: dim {axis} must satisfy MIN ≤ OPT ≤ MAX, "
                             f"got {lo}, {opt}, {hi}")


def check_profile(profile: Profile, specs: Sequence[InputSpec]) -> None:
    """Refuse a profile that names unknown inputs, has the wrong rank or changes a fixed dim."""
    by_name = {spec.name: spec for spec in specs}
    for name, shape_range in profile.items():
        spec = by_name.get(name)
        if spec is None:
            raise InputError(f"--shapes names input {name!r}, but the model's inputs are: {', '.join(by_name) or '(none)'}")
        if spec.shape and len(spec.shape) != len(shape_range.min):
            raise InputError(f"--shapes {name}:{shape_range.describe()} has rank {len(shape_range.min)} but input "
                             f"{name!r} has rank {len(spec.shape)} {spec.describe()}")
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int) and not (shape_range.min[axis] == shape_range.opt[axis] == shape_range.max[axis] == dim):
                raise InputError(f"--shapes {name}:{shape_range.describe()} changes dim {axis}, which the model fixes "
                                 f"at {dim} {spec.describe()}")


def is_dynamic(spec: InputSpec) -> bool:
    return any(not isinstance(d, int) for d in spec.shape)


def derive_profile(specs: Sequence[InputSpec], batches: Sequence[int] = (1,), data: DataSet | None = None,
                   given: Profile | None = None) -> Profile:
    """A profile for every dynamic input: ``given`` entries as they are, the rest derived
    (see the module docstring). Static inputs get none."""
    given = dict(given or {})
    check_profile(given, specs)
    shared = batch_axis(specs).kind == "dynamic"
    sizes = feed_shapes(specs, max(batches), data_feed_shapes(data))
    profile: Profile = {}
    for spec in specs:
        if spec.name in given:
            profile[spec.name] = given[spec.name]
            continue
        if not is_dynamic(spec):
            continue
        low, opt, high = [], [], []
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                low.append(dim), opt.append(dim), high.append(dim)
            elif axis == 0 and shared:
                low.append(min(batches)), opt.append(max(batches)), high.append(max(batches))
            else:
                size = sizes[spec.name][axis]
                low.append(size), opt.append(size), high.append(size)
        profile[spec.name] = ShapeRange(tuple(low), tuple(opt), tuple(high))
    return profile


def data_feed_shapes(data: DataSet | None) -> dict[str, tuple[int, ...]]:
    """The shape of one feed of ``data`` per input (its batch axis as it is); empty without data."""
    if data is None:
        return {}
    return {name: tuple(array.shape[1:] if data.stacked else array.shape) for name, array in data.inputs.items()}


def feed_shapes_for(specs: Sequence[InputSpec], batch: int, profile: Profile,
                    data: DataSet | None = None) -> dict[str, Dims]:
    """The shapes to time ``specs`` at: the batch axis (when shared and dynamic) set to ``batch``, other
    symbolic dims from the profile's OPT, else from the data or the probe sizes
    (:func:`graphopt.data.feed_shapes`: one size per dim name)."""
    known = data_feed_shapes(data)
    known.update({name: shape_range.opt for name, shape_range in profile.items()})
    return feed_shapes(specs, batch, known)


def check_within(profile: Profile, feeds_shapes: dict[str, Sequence[int]], what: str = "the engine") -> None:
    """Refuse input shapes outside the profile with a one-line message naming the input and the range."""
    for name, shape in feeds_shapes.items():
        shape_range = profile.get(name)
        if shape_range is not None and not shape_range.contains(tuple(shape)):
            raise InputError(f"input {name!r} of shape {_fmt(shape)} is outside {what}'s profile "
                             f"(MIN {_fmt(shape_range.min)}, MAX {_fmt(shape_range.max)}); rebuild with "
                             f"--shapes {name}:MIN:OPT:MAX covering it")
