"""``python -m models``: list the reference models or build them on demand.

    python -m models --list
    python -m models resnet18-224 minilm-l6          # or: --name resnet18-224 --name minilm-l6
    python -m models --zoo                           # the architecture zoo (models.ZOO_MODELS)
    python -m models --all [--out-dir DIR] [--force] # every model, the zoo included

Prints one line per model: its files and how long building took. ``--force`` deletes the model's existing
files in the output folder first (never the committed ones in ``models/``: use
``python -m models.build_digits`` to regenerate those).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.artifacts import npz_paths
from models.registry import MODELS_DIR, REFERENCE_MODELS, ZOO_MODELS, build_model, get_model


def _size(path: Path | None) -> str:
    if path is None:
        return "-"
    size = path.stat().st_size
    return f"{size / 1e6:.1f} MB" if size >= 1e5 else f"{size / 1e3:.0f} kB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m models", description="Build graphopt's reference models."
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="build these models")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--all", action="store_true", help="build every model (the zoo included)")
    parser.add_argument("--zoo", action="store_true", help="build the architecture zoo")
    parser.add_argument("--name", action="append", default=[], metavar="NAME", help="build this model (repeatable)")
    parser.add_argument("--out-dir", type=Path, help="output folder (default: models/ or models/_build/)")
    parser.add_argument("--force", action="store_true", help="delete the model's files first, then rebuild")
    args = parser.parse_args(argv)
    named = [*args.names, *args.name]
    chosen = sum((args.list, args.all, args.zoo, bool(named)))
    if chosen != 1:
        parser.error("give model names, or exactly one of --list, --all, --zoo")

    if args.list:
        for m in REFERENCE_MODELS.values():
            where = "committed" if m.committed else "on demand"
            inputs = ", ".join(f"{k} {tuple(shape)} {dtype}" for k, (shape, dtype) in m.input_spec.items())
            print(f"{m.name:20s} {where:9s}  check={m.check:16s} {inputs}\n{'':20s} {m.description}")
        return 0

    try:
        names = list(REFERENCE_MODELS) if args.all else list(ZOO_MODELS) if args.zoo else [get_model(n).name for n in named]
    except ValueError as exc:
        parser.error(str(exc))
    failed = 0
    for name in names:
        model = get_model(name)
        out_dir = args.out_dir or model.default_dir
        if args.force:
            if out_dir.resolve() == MODELS_DIR:
                print(f"{name}: not deleting committed files in models/; use python -m models.build_digits")
            else:
                for path in (out_dir / f"{model.stem}.onnx", *npz_paths(out_dir, model.stem)):
                    path.unlink(missing_ok=True)
        start = time.perf_counter()
        try:
            paths = build_model(name, out_dir)
        except ImportError as exc:
            print(f"{name}: skipped — {exc}", file=sys.stderr)
            failed += 1
            continue
        seconds = time.perf_counter() - start
        files = "  ".join(f"{p.name if p else '-'} ({_size(p)})" for p in paths)
        print(f"{name:20s} {seconds:6.1f} s  {files}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
