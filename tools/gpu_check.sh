#!/usr/bin/env bash
# GPU checks of gpuconv's CUDA kernels, in under 6 minutes, on a machine with an NVIDIA GPU and cupy
# (PyTorch and compute-sanitizer are used when present). The repository is used in place: run from anywhere,
#   bash tools/gpu_check.sh
# Steps (each under its own timeout; the script goes on after a failure and exits non-zero if any failed):
#   0. every kernel file compiled for the GPU, in parallel processes (tools/gpu_check.py compile): CuPy's kernel
#      cache on disk then serves the steps below
#   1. the NVRTC resource table (registers / shared memory / spills), when cuda-bindings is installed
#   2. tests/test_kernels.py on the cupy backend
#   3. the shared backend-parametrized suite on the cupy backend
#   4. every kernel vs the NumPy float64 reference in every mode (float64, fp32, tf32, fp16, bf16), each error
#      against its bound from the error analysis (gpuconv/_accuracy.py)
#   5. dw / db bitwise-determinism over repeated runs, every mode
#   5b. the wgmma forward and dx (sm_90 only, GPUCONV_WGMMA=1; FP16, BF16 and TF32): their tests
#      against float64, the wgmma rate probe (tools/gpu_check.py wgmma_rate: the main loop's TFLOP/s without and
#      with the copies), the TF32 dx's two variants timed side by side (wgmma_dx), then fp16 and tf32 timings
#      next to cuDNN (elsewhere the tests skip and the timings are the mma.sync kernels' again)
#   6. compute-sanitizer memcheck and racecheck over one pass of every kernel, every mode (and, in step wgmma, of
#      the wgmma kernels: tools/gpu_check.py sanitize_wgmma)
#   7. forward / backward timings of the benchmark shapes and the ResNet-50 training-size layers next to cuDNN
#      (PyTorch) in the same mode: fp32 (TF32 off), tf32 (TF32 on), fp16, bf16
#   8. the torch bridge on CUDA tensors (tools/gpu_torch_bridge.py): gpuconv.torch against torch.nn.Conv2d, run
#      on torch's current stream, no host copies (skipped when torch has no CUDA)
# A mode the build or the device cannot run (no bfloat16 kernels, CuPy before 14) is reported as skipped.
# Dry run without a GPU: GPU_CHECK_BACKEND=emulator bash tools/gpu_check.sh runs the same steps on the CPU
# emulator (small shapes, no sanitizer, no cuDNN) to check the script itself; add
# GPU_CHECK_STEPS=kernels,accuracy,determinism,bench to leave out the shared suite, which pytest already runs on
# the emulator and which takes longer than its GPU time limit there.
# GPU_CHECK_STEPS=kernels,suite,... runs only the named steps (compile resources kernels suite accuracy
# determinism wgmma memcheck racecheck bench torch; default: all but resources, which CI runs with the pinned
# NVRTC 12).
# GPU_CHECK_BUDGET_S caps the whole script (default 350 s). Keep the full log: bash tools/gpu_check.sh | tee LOG
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
PY="${PYTHON:-python3}"
BE="${GPU_CHECK_BACKEND:-cupy}"
export GPU_CHECK_BACKEND="$BE"
FAILED=()

BUDGET_S="${GPU_CHECK_BUDGET_S:-350}"  # a step gets at most what is left of this
STEPS=",${GPU_CHECK_STEPS:-compile,kernels,suite,accuracy,determinism,wgmma,memcheck,racecheck,bench,torch},"
export PYTHONUNBUFFERED=1

step() {  # step KEY NAME TIMEOUT_S COMMAND...
    local key="$1" name="$2" limit="$3"
    shift 3
    case "$STEPS" in *",$key,"*) ;; *) return ;; esac
    local left=$((BUDGET_S - SECONDS))
    if [ "$left" -lt 15 ]; then
        echo "=== $name: skipped, out of time"
        FAILED+=("$name (skipped: out of time)")
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "=== $name"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "--- $name: rc=$rc, $((SECONDS - t0)) s"
    if [ "$rc" -ne 0 ]; then FAILED+=("$name (rc=$rc)"); fi
}

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
if [ "$BE" = cupy ]; then
    "$PY" -c "import cupy; print('cupy', cupy.__version__, 'CUDA runtime', cupy.cuda.runtime.runtimeGetVersion())" \
        || { echo "cupy is not usable here: nothing to check"; exit 2; }
fi

if "$PY" -c "import cuda.bindings.nvrtc" 2>/dev/null; then
    step resources "NVRTC resources (no spills)" 40 "$PY" tools/gpu_check.py resources
else
    echo "(cuda-bindings not installed: NVRTC resource table skipped)"
fi

step compile "compile every kernel file (parallel; fills CuPy's kernel cache)" 150 "$PY" tools/gpu_check.py compile

PYTEST=("$PY" -m pytest -q -p no:cacheprovider -p no:benchmark --tb=short -rfEs)
"$PY" -c "import xdist" 2>/dev/null && PARALLEL=(-n 8) || PARALLEL=()
step kernels "tests/test_kernels.py on $BE" 60 env GPUCONV_KERNEL_BACKEND="$BE" "${PYTEST[@]}" tests/test_kernels.py

# The shared suite runs on the backends listed in tests/conftest.py BACKENDS; when "$BE" is not listed yet,
# run a copy of the suite with it added (the repository itself is not modified).
if [ ! -f tests/conftest.py ] || ! grep -qE '^BACKENDS = ' tests/conftest.py; then
    echo "(no shared backend-parametrized suite here: tests/conftest.py with BACKENDS missing; step skipped)"
else
    SUITE_DIR="tests"
    if ! grep -qE "^BACKENDS = .*\"$BE\"" tests/conftest.py; then
        TMP_REPO="$(mktemp -d)"  # tests/ copied, the package linked: the suite finds the repository at ../
        ln -s "$ROOT/gpuconv" "$TMP_REPO/gpuconv"
        ln -s "$ROOT/kernels" "$TMP_REPO/kernels"
        SUITE_DIR="$TMP_REPO/tests"
        cp -r tests "$SUITE_DIR"
        rm -f "$SUITE_DIR/test_kernels.py"
        sed -i -E "s/^BACKENDS = \[(.*)\]/BACKENDS = [\1, \"$BE\"]/" "$SUITE_DIR/conftest.py"
    fi
    step suite "shared test suite on $BE" 120 "${PYTEST[@]}" "${PARALLEL[@]}" -k "$BE" "$SUITE_DIR"
fi

step accuracy "accuracy vs NumPy float64, every mode" 45 "$PY" tools/gpu_check.py accuracy
step determinism "dw/db determinism" 30 "$PY" tools/gpu_check.py determinism
# Not yet the default path (gpuconv/backends/cuda_tc.py, WGMMA_ENV): its first GPU run is here.
step wgmma "wgmma forward and dx on $BE: tests vs float64" 45 env GPUCONV_WGMMA=1 GPUCONV_KERNEL_BACKEND="$BE" \
    "${PYTEST[@]}" tests/test_tc_kernels.py -k "sm90 or forward_and_backward"
step wgmma "wgmma rate probe (the model's wgmma assumptions)" 20 "$PY" tools/gpu_check.py wgmma_rate
step wgmma "wgmma TF32 dx: A from registers vs from shared memory (DZ_TF32)" 30 "$PY" tools/gpu_check.py wgmma_dx
[ "$BE" = cupy ] && step wgmma "wgmma forward and dx: fp16 and tf32 timings vs cuDNN" 90 env GPUCONV_WGMMA=1 "$PY" tools/gpu_check.py bench fp16 tf32
step bigoffsets "offsets past 2**31 elements (tiled paths)" 60 "$PY" tools/gpu_check.py bigoffsets

SAN="$(command -v compute-sanitizer || true)"
[ -z "$SAN" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SAN=/usr/local/cuda/bin/compute-sanitizer
if [ -n "$SAN" ] && [ "$BE" = cupy ]; then
    step memcheck "compute-sanitizer memcheck" 45 "$SAN" --tool memcheck --error-exitcode 1 --leak-check no "$PY" tools/gpu_check.py sanitize
    step racecheck "compute-sanitizer racecheck" 60 "$SAN" --tool racecheck --error-exitcode 1 "$PY" tools/gpu_check.py sanitize
    step wgmma "compute-sanitizer memcheck, wgmma kernels" 30 "$SAN" --tool memcheck --error-exitcode 1 --leak-check no \
        "$PY" tools/gpu_check.py sanitize_wgmma
    step wgmma "compute-sanitizer racecheck, wgmma kernels" 30 "$SAN" --tool racecheck --error-exitcode 1 \
        "$PY" tools/gpu_check.py sanitize_wgmma
else
    echo "(compute-sanitizer not found: memcheck / racecheck skipped)"
fi

step bench "timings vs cuDNN, every mode" 150 "$PY" tools/gpu_check.py bench

# The torch bridge (its own script): CUDA tensors on the GPU; a dry run of its comparisons on CPU tensors otherwise.
[ "$BE" = cupy ] && BRIDGE=() || BRIDGE=(--device cpu)
step torch "torch bridge on CUDA tensors" 60 "$PY" tools/gpu_torch_bridge.py "${BRIDGE[@]}"

echo
if [ "${#FAILED[@]}" -eq 0 ]; then
    echo "gpu_check: all steps passed ($SECONDS s)"
else
    echo "gpu_check: ${#FAILED[@]} step(s) failed ($SECONDS s):"
    printf '  %s\n' "${FAILED[@]}"
    exit 1
fi
