#!/usr/bin/env bash
# One run on a GPU machine: build with CUDA, GPU tests, compute-sanitizer on small cases, Triton
# A/B against a base version (when one is given), op, explain and training-step benchmarks, Triton
# launch sweep, in that order of priority.
# Each stage has its own time limit and a failing stage does not stop the next; result records are
# appended to benchmarks/results/*.jsonl and to $OUT. Without the sweep, about 4 minutes on an H200
# before the CAM method family (its tests and bench_methods add about as much again; not yet run).
#
#   bash benchmarks/gpu_check.sh
#   STEPS="build bench_op" bash benchmarks/gpu_check.sh     # a subset
#
# The explain benchmark's anchors (grad-cam, ttach, captum, torchcam) are not on the device:
# `bash benchmarks/anchor_wheels.sh` here, then carry .whl/; without them it times batchcam alone.
# The A/B step needs the base version's fused_cam.py as a file (no git there), e.g.
#   mkdir -p .ab && git show HEAD~1:batchcam_kernels/fused_cam.py > .ab/fused_cam.py   (carry .ab)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/batchcam-gpu}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-build tests sanitize ab_triton bench_op bench_methods bench_explain bench_train tune}"
TRITON_BASE="${TRITON_BASE:-.ab/fused_cam.py}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
status=0 last_rc=0

# run NAME SECONDS COMMAND...: a stage with a time limit, timed; its exit status in last_rc.
run() {
  local name=$1 limit=$2 start
  shift 2
  case " $STEPS " in *" $name "*) ;; *) last_rc=0; return 0 ;; esac
  echo "=== $name (limit ${limit} s)"
  start=$(date +%s)
  timeout -k 10 "$limit" "$@"
  last_rc=$?
  echo "=== $name: rc $last_rc, $(( $(date +%s) - start )) s"
  [ "$last_rc" = 0 ] || status=1
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/bench-site .whl/*.whl \
    && export PYTHONPATH=/tmp/bench-site
fi

# The device has torch and triton but no network: build against them, install no dependencies.
install=("$PY" -m pip install -q --no-build-isolation --no-deps -e .)
run build 240 "${install[@]}"
if [ "$last_rc" = 0 ]; then
  "$PY" -c "import batchcam; assert batchcam.backend.cuda_kernels_built(), 'CUDA kernels not built'" || status=1
else
  echo "CUDA build failed: building the CPU extension so that the Triton path still runs"
  run build 120 env BATCHCAM_SKIP_CUDA_BUILD=1 "${install[@]}"
fi

parallel=()
"$PY" -c "import xdist" 2>/dev/null && parallel=(-n 8)
run tests 360 "$PY" -m pytest -m gpu -q -p no:cacheprovider "${parallel[@]}"\
  -rfE > "$OUT/pytest-gpu.txt" 2>&1
tail -40 "$OUT/pytest-gpu.txt" 2>/dev/null
sanitizer="$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | tail -1)"
[ -n "$sanitizer" ] && run sanitize 120 "$sanitizer" --error-exitcode 1 --target-processes all \
  "$PY" benchmarks/sanitize_cases.py
[ -f "$TRITON_BASE" ] && run ab_triton 90 "$PY" benchmarks/tools/ab_triton.py --base "$TRITON_BASE" --out "$OUT"
run bench_op 200 "$PY" benchmarks/bench_op.py --device cuda --budget 0.3 --out "$OUT"
run bench_methods 240 "$PY" benchmarks/bench_op.py --device cuda --method all --float32-only --budget 0.2 --out "$OUT"
run bench_explain 240 "$PY" benchmarks/bench_explain.py --device cuda --method all --budget 0.1 --out "$OUT"
run bench_train 90 "$PY" benchmarks/bench_train.py --device cuda --models simple-cnn --out "$OUT"
run tune 90 "$PY" benchmarks/tools/tune_triton.py --out "$OUT"
exit $status
