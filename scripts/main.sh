#!/usr/bin/env bash
# Set-up, then the main job: the fused_cam benchmark on this machine's CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python benchmarks/bench_op.py "$@"
