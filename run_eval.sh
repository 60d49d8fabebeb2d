#!/bin/sh
# Evaluate a .pdparams in one process; writes $OUT/metrics.json. Runs under sh and bash. Variables as in
# run_eval_multi.sh: CFG, WEIGHTS, DATASET, DATA, OUT. Arguments are passed on to main_single_gpu.py.
set -eu
CFG=${CFG:-configs/repmlp_b_224.yaml}
WEIGHTS=${WEIGHTS:-repmlp_b_224.pdparams}
DATASET=${DATASET:-imagenet2012}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/eval_b224}
exec python "$(dirname "$0")/main_single_gpu.py" -cfg "$CFG" -dataset "$DATASET" -data_path "$DATA" -output "$OUT" \
    -eval -pretrained "$WEIGHTS" -batch_size_eval 64 "$@"
