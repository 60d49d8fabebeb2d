#!/usr/bin/env bash
# Evaluate a .pdparams on the ImageNet validation list in one process; writes $OUT/metrics.json.
set -euo pipefail
CFG=${CFG:-configs/repmlp_b_224.yaml}
WEIGHTS=${WEIGHTS:-repmlp_b_224.pdparams}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/eval_b224}
python main_single_gpu.py -cfg "$CFG" -dataset imagenet2012 -data_path "$DATA" -output "$OUT" \
    -eval -pretrained "$WEIGHTS" -batch_size_eval 64 "$@"
