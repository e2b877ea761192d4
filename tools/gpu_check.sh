#!/usr/bin/env bash
# GPU and TensorRT checks for graphopt, on a machine with an NVIDIA GPU. Installs nothing from the network.
#
#   bash tools/gpu_check.sh [OUT_DIR]          (default gpu_check_results/)
#
# 1. says what the machine has: GPU (nvidia-smi), onnxruntime and the providers that really load,
#    TensorRT, CUDA torch;
# 2. runs every test marked gpu or trt (tests skip with their reason when a piece is missing);
# 3. a short profile of the reference models present here (fp32 / fp16 / int8) on onnxruntime's CUDA
#    and TensorRT providers and as TensorRT plans: one table (tools/gpu_profile.py);
# 4. ends with the list of what it could not run, and why.
# Offline wheels: set GRAPHOPT_WHEELS=DIR to install graphopt's missing dependencies from DIR only
# (pip --no-index); nothing else is installed.
set -u
cd "$(dirname "$0")/.."
OUT="${1:-gpu_check_results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
MISSING=()

echo "== machine"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
else
  echo "nvidia-smi not found"; MISSING+=("nvidia-smi (no NVIDIA driver tools)")
fi

if [ -n "${GRAPHOPT_WHEELS:-}" ]; then
  echo "== installing from $GRAPHOPT_WHEELS only (no network)"
  "$PY" -m pip install -q --no-index --find-links "$GRAPHOPT_WHEELS" -e . || MISSING+=("offline install from $GRAPHOPT_WHEELS failed")
fi

"$PY" - <<'PYEOF' | tee "$OUT/machine.txt"
import importlib.util
def version(name):
    if importlib.util.find_spec(name) is None:
        return "not installed"
    module = __import__(name)
    return getattr(module, "__version__", "installed")
for name in ("graphopt", "onnx", "onnx_ir", "onnxruntime", "tensorrt", "torch", "matplotlib", "pytest"):
    print(f"{name:12} {version(name)}")
try:
    from graphopt.target import cuda_gpus, ort_provider_loads
    print("GPUs (libcuda):", [f"{g.name} sm_{g.compute_capability[0]}{g.compute_capability[1]}" for g in cuda_gpus()] or "none")
    import onnxruntime as ort
    print("onnxruntime lists:", ort.get_available_providers())
    print("really load:", [p for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider") if ort_provider_loads(p)] or "no GPU provider")
except Exception as exc:
    print("graphopt cannot run here:", type(exc).__name__, exc)
try:
    import torch
    print("torch CUDA:", torch.cuda.is_available(), torch.version.cuda)
except Exception:
    pass
PYEOF

echo "== tests marked gpu or trt"
"$PY" -m pytest -q -m "gpu or trt" -rs -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log"
status=${PIPESTATUS[0]}
[ "$status" -ne 0 ] && [ "$status" -ne 5 ] && MISSING+=("some gpu/trt tests FAILED (see $OUT/pytest_gpu.log)")
grep -E "^SKIPPED" "$OUT/pytest_gpu.log" | sed 's/^/skipped: /' > "$OUT/skipped.txt" || true

echo "== short profile of the reference models"
"$PY" tools/gpu_profile.py --out "$OUT" || MISSING+=("tools/gpu_profile.py failed")

echo "== could not run"
cat "$OUT/skipped.txt"
grep -A100 "^not run:" "$OUT/gpu_profile.md" 2>/dev/null | tail -n +2
for line in "${MISSING[@]}"; do echo "- $line"; done
[ "${#MISSING[@]}" -eq 0 ] || exit 1
