#!/usr/bin/env bash
# GPU and TensorRT checks for graphopt, on a machine with an NVIDIA GPU. Installs nothing from the network.
#
#   bash tools/gpu_check.sh [OUT_DIR]          (default gpu_check_results/)
#
# 1. Python: .venv/bin/python when this checkout has one (`make install`), else $PYTHON, else python3.
#    graphopt must import as installed (graphopt.passes maps to passes/). When it does not, the script
#    installs it from this checkout, offline: its missing dependencies (onnxsim, say) from the wheelhouse
#    $GRAPHOPT_WHEELS (default .gpu_wheels/, made by `bash tools/gpu_wheels.sh` where pip reaches PyPI),
#    then graphopt itself in editable mode (pip --no-index --no-deps --no-build-isolation; a setuptools>=77
#    wheel from the wheelhouse builds it when the machine's setuptools is older). onnxruntime (CPU) stands
#    in for onnxruntime-gpu. pip runs with PIP_NO_INDEX=1 throughout.
# 2. says what the machine has (GPU through libcuda and nvidia-smi, library versions read from package
#    metadata — TensorRT is never imported here, and graphopt imports it only after a GPU answered);
# 3. runs every test marked gpu or trt, collecting only the test files that carry such marks, so a test
#    module whose optional dependency is missing here cannot stop the run (skips say why);
# 4. a short profile of the reference models present here (fp32 / fp16 / int8) on onnxruntime's CUDA and
#    TensorRT providers and as TensorRT plans (tools/gpu_profile.py; its table is in OUT_DIR/gpu_profile.md);
# 5. ends with one summary table; exit 1 when a test failed or a step broke.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
WHEELS="${GRAPHOPT_WHEELS:-.gpu_wheels}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
BROKEN=()
UNMET=()
SETUP="graphopt importable as installed"

echo "== python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
if ! "$PY" -c "import graphopt.passes" >/dev/null 2>&1; then
  echo "== installing graphopt from this checkout, offline (wheelhouse: $WHEELS)"
  # graphopt's requirements minus onnxruntime-gpu (the module `onnxruntime` is what it needs): pip keeps
  # what is installed and takes only what is missing from the wheelhouse.
  mapfile -t REQS < <("$PY" - <<'PYEOF'
import importlib.util
import re

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

for requirement in tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]:
    name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0)
    if name.startswith("onnxruntime"):  # onnxruntime-gpu or onnxruntime: either gives the module graphopt uses
        if importlib.util.find_spec("onnxruntime") is not None:
            continue
        requirement = "onnxruntime"
    print(requirement)
PYEOF
)
  FIND=()
  [ -d "$WHEELS" ] && FIND=(--find-links "$WHEELS")
  for requirement in "${REQS[@]}"; do  # one at a time: one that cannot be met offline does not block the rest
    "$PY" -m pip install -q "${FIND[@]}" "$requirement" >/dev/null 2>&1 || UNMET+=("$requirement")
  done
  BUILD_PATH=""
  if ! "$PY" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 77)" 2>/dev/null; then
    BUILD_PATH="$(mktemp -d)"
    "$PY" -m pip install -q --no-deps --target "$BUILD_PATH" "${FIND[@]}" "setuptools>=77" 2>&1 | tail -3
  fi
  EDITABLE="$(PYTHONPATH="${BUILD_PATH:+$BUILD_PATH:}$PYTHONPATH" \
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -E "^ERROR|Error" | tail -1 | sed "s/^ *//")"
  UNMET_TEXT="${UNMET[*]:+; not met offline: ${UNMET[*]}}${EDITABLE:+; editable install: $EDITABLE}"
  if "$PY" -c "import graphopt.passes, onnxsim" >/dev/null 2>&1; then
    SETUP="installed offline from this checkout (editable) + wheelhouse$UNMET_TEXT"
  else
    SETUP="does not import ($("$PY" -c 'import graphopt.passes, onnxsim' 2>&1 | tail -1))$UNMET_TEXT"
    SETUP="$SETUP — make the wheelhouse with tools/gpu_wheels.sh"
    BROKEN+=("graphopt setup")
  fi
fi
echo "   $SETUP"

echo "== machine"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi not found"
fi
"$PY" - <<'PYEOF' | tee "$OUT/machine.txt"
from importlib import metadata

def version(*names):
    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"

for label, names in (("graphopt", ["graphopt"]), ("onnx", ["onnx"]), ("onnx-ir", ["onnx-ir", "onnx_ir"]),
                     ("onnxruntime", ["onnxruntime-gpu", "onnxruntime"]), ("onnxsim", ["onnxsim"]),
                     ("tensorrt", ["tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11"]),
                     ("torch", ["torch"]), ("cupy", ["cupy-cuda13x", "cupy-cuda12x", "cupy"]), ("pytest", ["pytest"])):
    print(f"{label:12} {version(*names)}")
try:
    from graphopt.target import cuda_gpus, ort_provider_loads
    gpus = cuda_gpus()
    print("GPUs (libcuda):", [f"{g.name} sm_{g.compute_capability[0]}{g.compute_capability[1]}" for g in gpus] or "none")
    import onnxruntime as ort
    print("onnxruntime lists:", ort.get_available_providers())
    print("really load:", [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if ort_provider_loads(p)]
          or "no GPU provider")
except Exception as exc:
    print("graphopt cannot run here:", type(exc).__name__, exc)
PYEOF

echo "== tests marked gpu or trt"
mapfile -t TEST_FILES < <(grep -lE "pytest\.mark\.(gpu|trt)" tests/*.py)
"$PY" -m pytest -q -m "gpu or trt" -rs -p no:cacheprovider --continue-on-collection-errors "${TEST_FILES[@]}" \
  2>&1 | tee "$OUT/pytest_gpu.log"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] && [ "$status" -ne 5 ] && BROKEN+=("gpu/trt tests (exit $status, see $OUT/pytest_gpu.log)")
TESTS="$(grep -E "^(=+ )?[0-9]+ (passed|failed|skipped|error|deselected)" "$OUT/pytest_gpu.log" | tail -1 | tr -d '=' | xargs)"
grep -E "^SKIPPED" "$OUT/pytest_gpu.log" | sed 's/^SKIPPED \[[0-9]*\] /- skipped: /' > "$OUT/skipped.txt" || true

echo "== short profile of the reference models"
"$PY" tools/gpu_profile.py --out "$OUT" || BROKEN+=("tools/gpu_profile.py")
ROWS="$(grep -cE "^\| [^|]+ \| (fp32|fp16|int8) \|" "$OUT/gpu_profile.md" 2>/dev/null)"

echo
echo "== summary"
GPU="$(sed -n 's/^GPUs (libcuda): //p' "$OUT/machine.txt")"
printf '| %-22s | %s\n' "check" "result" "----------------------" "------" \
  "GPU (libcuda)" "${GPU:-unknown}" \
  "graphopt" "$SETUP" \
  "tests marked gpu/trt" "${TESTS:-none ran}" \
  "profile rows" "$ROWS (table: $OUT/gpu_profile.md)" \
  "broken steps" "${BROKEN[*]:-none}"
echo
echo "not run, and why:"
cat "$OUT/skipped.txt"
grep -A100 "^not run:" "$OUT/gpu_profile.md" 2>/dev/null | tail -n +2
[ "${#BROKEN[@]}" -eq 0 ] || exit 1
