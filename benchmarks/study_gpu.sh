#!/usr/bin/env bash
# The GPU study of docs/training.md ("Seeds"), sized for one device run of under 8 minutes:
# ResNet-18 and ConvNeXt-V2-Tiny on full Fashion-MNIST and full MNIST, every protocol per seed,
# bf16 autocast. Each comparison has its share of the time limit; one that runs out is left
# resumable (run the script again on the same folder to continue it) and its finished seeds
# are reported. Needs the IDX files of both data sets (no data packages on the device):
#   python benchmarks/tools/export_idx.py --dataset fashion-mnist --out data/fashion-mnist
#   python benchmarks/tools/export_idx.py --dataset mnist --out data/mnist          # then carry data/
#   STEPS=build bash benchmarks/gpu_check.sh && bash benchmarks/study_gpu.sh
# Results: $OUT/study/<model>-<dataset>/ (compare.md, compare.json per seed and over seeds).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/batchcam-gpu}"
DATA="${DATA:-data}"
MODELS="${MODELS:-resnet18 convnext-v2-tiny}"
DATASETS="${DATASETS:-fashion-mnist mnist}"
SEEDS="${SEEDS:-0,1,2}"
EPOCHS="${EPOCHS:-2}"
LIMIT_S="${LIMIT_S:-110}"  # per comparison: 4 of them, under 8 minutes in all
EXTRA="${EXTRA:---batch-size 256 --amp --device cuda}"
status=0
mkdir -p "$OUT/study"
for model in $MODELS; do
  for dataset in $DATASETS; do
    out="$OUT/study/$model-$dataset"
    resume=()
    [ -f "$out/compare-plan.json" ] && resume=(--resume)
    start=$(date +%s)
    # shellcheck disable=SC2086  # EXTRA: several options
    timeout -k 10 "$LIMIT_S" python3 -m batchcam compare --model "$model" --dataset "$dataset" \
      --data-dir "$DATA/$dataset" --epochs "$EPOCHS" --seeds "$SEEDS" --no-progress --out "$out" \
      "${resume[@]}" $EXTRA > "$out.log" 2>&1
    rc=$?
    echo "=== $model $dataset: rc $rc, $(( $(date +%s) - start )) s (log $out.log)"
    [ "$rc" = 0 ] || status=1
    for table in "$out"/compare.md "$out"/seed-*/compare.md; do
      [ -f "$table" ] && { echo "--- $table"; grep '^|' "$table"; }
    done
    find "$out" -name checkpoint.pt -delete  # the tables and metrics come back, not the weights
  done
done
exit $status
