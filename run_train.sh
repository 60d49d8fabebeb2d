#!/usr/bin/env bash
# Train RepMLPNet-B224 with the official recipe in one process (a GPU if Paddle has one, else the CPU).
# The LR is scaled to the batch you use (TRAIN.LR_REFERENCE_BATCH); -resume auto continues an interrupted run.
set -euo pipefail
CFG=${CFG:-configs/repmlp_b_224.yaml}
RECIPE=${RECIPE:-configs/recipes/official.yaml}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/train_b224}
python main_single_gpu.py -cfg "$CFG" "$RECIPE" -dataset imagenet2012 -data_path "$DATA" -output "$OUT" \
    -batch_size 32 -resume auto "$@"
