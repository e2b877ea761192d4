"""Pipelines: the ordered pass list plus run-wide settings, from flags or from a YAML/JSON file.

A pipeline file and the equivalent CLI flags build the same objects::

    target: cpu                # optional: cpu | cuda | trt
    max_accuracy_drop: 1.0     # optional, percentage points
    passes:
      - simplify               # a pass with default options
      - simplify:              # or with options (the fields of the pass's Options dataclass)
          fuse_batchnorm: false
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any

from graphopt.errors import InputError
from graphopt.pass_base import GraphoptPass
from graphopt.target import TARGET_KINDS
from graphopt.verify import METRIC_CHOICES, MetricChoice

PIPELINE_KEYS = {"passes", "target", "max_accuracy_drop", "metric"}


@dataclasses.dataclass
class Pipeline:
    """What to run: passes in order, the target (``None`` = detect), the accuracy budget and the
    metric that judges it (:mod:`graphopt.verify`)."""

    passes: list[GraphoptPass]
    target: str | None = None
    max_accuracy_drop: float | None = None
    metric: MetricChoice = "auto"

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "max_accuracy_drop": self.max_accuracy_drop,
            "metric": self.metric,
            "passes": [{p.name: dataclasses.asdict(p.options)} for p in self.passes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "pipeline") -> Pipeline:
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected a mapping with a 'passes' list")
        unknown = set(data) - PIPELINE_KEYS
        if unknown:
            raise InputError(f"{source}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
        entries = data.get("passes")
        if not isinstance(entries, list) or not entries:
            raise InputError(f"{source}: 'passes' must be a non-empty list")
        target = data.get("target")
        if target is not None and target not in TARGET_KINDS:
            raise InputError(f"{source}: target must be one of {', '.join(TARGET_KINDS)}, got {target!r}")
        budget = data.get("max_accuracy_drop")
        if budget is not None and not isinstance(budget, int | float):
            raise InputError(f"{source}: max_accuracy_drop must be a number of percentage points")
        metric = data.get("metric", "auto")
        if metric not in METRIC_CHOICES:
            raise InputError(f"{source}: metric must be one of {', '.join(METRIC_CHOICES)}, got {metric!r}")
        return cls([make_pass(entry, source) for entry in entries], target,
                   None if budget is None else float(budget), metric)

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"pipeline file not found: {path}")
        text = path.read_text()
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:
            raise InputError(f"cannot parse pipeline file {path}: {str(exc).splitlines()[0]}") from exc
        return cls.from_dict(data, str(path))


def make_pass(entry: str | dict, source: str = "pipeline") -> GraphoptPass:
    """A pass from ``"name"`` or ``{"name": {option: value}}``."""
    from graphopt.passes import pass_class

    if isinstance(entry, str):
        name, raw = entry, {}
    elif isinstance(entry, dict) and len(entry) == 1:
        name, raw = next(iter(entry.items()))
        raw = raw or {}
    else:
        raise InputError(f"{source}: each pass is a name or a one-key mapping name: {{options}}, got {entry!r}")
    cls = pass_class(name)
    return cls(options_from_dict(cls.Options, raw, f"{source}: pass '{name}'"))


def options_from_dict(options_type: type, raw: dict[str, Any], where: str):
    """Build a frozen options dataclass from plain data, with one-line errors for bad keys/types."""
    if not isinstance(raw, dict):
        raise InputError(f"{where}: options must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(options_type)}
    unknown = set(raw) - set(fields)
    if unknown:
        raise InputError(f"{where}: unknown option(s) {sorted(unknown)}; valid: {sorted(fields)}")
    hints = typing.get_type_hints(options_type)
    values = {name: _coerce(value, hints[name], f"{where}: option '{name}'") for name, value in raw.items()}
    try:
        return options_type(**values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        raise InputError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise InputError(f"{where}: must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner, where) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where}: expected true/false, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise InputError(f"{where}: expected a string, got {value!r}")
        return value
    return value
