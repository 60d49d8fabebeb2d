#!/bin/sh
# Data-parallel training, by default RepMLPNet-B224 with the official recipe (8 GPUs x 32 images = its global
# batch of 256); runs under sh (dash) and bash alike. Set any of these variables (default in brackets):
#   MODE     spawn: one process per visible GPU (CUDA_VISIBLE_DEVICES chooses them); launch: the same through
#            python -m paddle.distributed.launch (GPUS on a GPU machine, else NPROCS CPU processes; IPS for
#            several machines); cpu: NPROCS CPU processes over gloo  [spawn]
#   CFG      model config  [configs/repmlp_b_224.yaml]
#   RECIPE   recipe merged after CFG; RECIPE= (empty) for none  [configs/recipes/official.yaml]
#   DATASET  imagenet2012 (list files under DATA) or demo  [imagenet2012]
#   DATA     dataset folder with train_list.txt and val_list.txt  [/dataset/imagenet]
#   OUT      output folder (logs, checkpoints; MODE=launch also writes its launch_logs/ there)  [output/train_b224]
#   NPROCS   processes for MODE=cpu, and per node for MODE=launch without a GPU  [2]
#   GPUS     GPUs for MODE=launch  [0,1,2,3,4,5,6,7]
#   IPS      MODE=launch on several machines: their addresses, comma-separated; run the same command on each
# Arguments are passed on to main_multi_gpu.py, e.g. -amp or -opts TRAIN.NUM_EPOCHS 10. The run continues from
# the newest checkpoint in OUT (-resume auto).
set -eu
CFG=${CFG:-configs/repmlp_b_224.yaml}
RECIPE=${RECIPE-configs/recipes/official.yaml}
DATASET=${DATASET:-imagenet2012}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/train_b224}
set -- -cfg "$CFG" ${RECIPE:+"$RECIPE"} -dataset "$DATASET" -data_path "$DATA" -output "$OUT" -batch_size 32 \
    -resume auto "$@"
ROOT=$(dirname "$0")
. "$ROOT/tools/multi_process.sh"
