#!/usr/bin/env bash
# Set-up, then the main job: the three protocols (baseline, prototype, batchcam) trained and
# compared with SimpleCNN on the embedded Fashion-MNIST slice; table in runs/default-compare.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python -m batchcam compare --model simple-cnn --dataset default --epochs 10 --batch-size 128 \
    --out runs/default-compare "$@"
