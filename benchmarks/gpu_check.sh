#!/usr/bin/env bash
# One run on a lent GPU (the device tool): build with CUDA, GPU tests, op benchmark.
# Prints the benchmark table last; result files go to benchmarks/results/ and to $OUT.
# Budget: under 6 minutes on an H100/H200 (build ~1 min, tests ~2-3 min, benchmark ~1-2 min).
#
#   bash benchmarks/gpu_check.sh            # everything
#   SKIP_TESTS=1 bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/batchcam-gpu}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

# The device has torch and triton but no network: build against them, install no dependencies.
start=$(date +%s)
export MAX_JOBS="$(nproc)" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
python -m pip install -q --no-build-isolation --no-deps -e . 2>&1 | tail -5
python -c "import batchcam; assert batchcam.ops._cuda_kernels_built(), 'CUDA kernels not built'"
echo "build: $(( $(date +%s) - start )) s"

if [ "${SKIP_TESTS:-0}" != "1" ]; then
  start=$(date +%s)
  python -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/pytest-gpu.txt" | tail -15 \
    || echo "GPU TESTS FAILED (see $OUT/pytest-gpu.txt); benchmarking anyway"
  echo "gpu tests: $(( $(date +%s) - start )) s"
fi

start=$(date +%s)
python benchmarks/bench_op.py --device cuda --budget 0.3 --out "$OUT" 2>&1 | tee "$OUT/bench_op.txt"
echo "benchmark: $(( $(date +%s) - start )) s"
