#!/usr/bin/env bash
# The wheelhouse tools/gpu_check.sh installs from on a GPU machine that has no network.
#
#   bash tools/gpu_wheels.sh [DIR] [REQUIREMENT...]      (default DIR .gpu_wheels/, ignored by git)
#
# Run it where pip reaches PyPI. It downloads, without their dependencies, wheels for the target
# machine's Python (GPU_PYTHON, default 3.12) on manylinux x86-64 of:
#   - graphopt's dependencies that a CUDA image with PyTorch usually lacks: onnxsim (a compiled wheel,
#     ~10 MB; the rest — onnx, onnx-ir, onnxruntime, numpy, click, rich, pyyaml — such images carry);
#   - setuptools>=77, which builds graphopt's editable install when the machine's setuptools is older;
#   - any REQUIREMENT given (another missing dependency).
# The folder stays small enough to travel with the working tree (the lent GPU machines take 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${1:-.gpu_wheels}"
shift || true
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$DIR"
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  PLATFORMS+=(--platform "$tag")
done
ONNXSIM="$(sed -n 's/^ *"\(onnxsim[^"]*\)",*$/\1/p' pyproject.toml | head -1)"
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
  --implementation cp "${PLATFORMS[@]}" -d "$DIR" "${ONNXSIM:-onnxsim}" "setuptools>=77" "$@"
ls -l "$DIR"
du -sh "$DIR"
