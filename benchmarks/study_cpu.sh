#!/usr/bin/env bash
# The CPU study of docs/training.md ("Seeds"): SimpleCNN on full Fashion-MNIST and full MNIST
# (10 epochs, batch 128), ResNet-18 on a stratified Fashion-MNIST slice, each with seeds 0, 1, 2.
# Run it again after an interruption: each comparison continues where it stopped (--resume).
#   bash benchmarks/study_cpu.sh                # writes under runs/study/
#   python benchmarks/tools/record_compare.py runs/study/simplecnn-mnist --tag study-simplecnn-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/study}
study() {
    local out="$OUT/$1"; shift
    local resume=()
    if [ -f "$out/compare-plan.json" ]; then resume=(--resume); fi
    python -m batchcam compare --seeds 0,1,2 --no-progress --out "$out" "${resume[@]}" "$@"
}
study simplecnn-fashion-mnist --model simple-cnn --dataset fashion-mnist --epochs 10 --batch-size 128
study simplecnn-mnist --model simple-cnn --dataset mnist --epochs 10 --batch-size 128
study resnet18-fashion-mnist-slice5000 --model resnet18 --dataset fashion-mnist --epochs 3 --batch-size 128 \
    --train-limit 5000 --test-limit 2000
