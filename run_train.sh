#!/bin/sh
# Train in one process (a GPU if Paddle has one, else the CPU), by default RepMLPNet-B224 with the official recipe;
# runs under sh and bash. The LR is scaled to the batch you use (TRAIN.LR_REFERENCE_BATCH); the run continues
# from the newest checkpoint in OUT. Variables as in run_train_multi.sh: CFG, RECIPE (RECIPE= for none), DATASET,
# DATA, OUT. Arguments are passed on to main_single_gpu.py.
set -eu
CFG=${CFG:-configs/repmlp_b_224.yaml}
RECIPE=${RECIPE-configs/recipes/official.yaml}
DATASET=${DATASET:-imagenet2012}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/train_b224}
exec python "$(dirname "$0")/main_single_gpu.py" -cfg "$CFG" ${RECIPE:+"$RECIPE"} -dataset "$DATASET" -data_path "$DATA" \
    -output "$OUT" -batch_size 32 -resume auto "$@"
