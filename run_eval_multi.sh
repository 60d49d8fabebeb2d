#!/bin/sh
# Data-parallel evaluation of a .pdparams: every validation image is counted once whatever the process count;
# writes $OUT/metrics.json (acc1, acc5 as fractions, loss, num_images). Runs under sh (dash) and bash alike.
# Set any of these variables (default in brackets):
#   MODE     spawn: one process per visible GPU (CUDA_VISIBLE_DEVICES chooses them); launch: the same through
#            python -m paddle.distributed.launch (GPUS on a GPU machine, else NPROCS CPU processes; IPS for
#            several machines); cpu: NPROCS CPU processes over gloo  [spawn]
#   CFG      model config  [configs/repmlp_b_224.yaml]
#   WEIGHTS  the weights to evaluate  [repmlp_b_224.pdparams]
#   DATASET  imagenet2012 (list files under DATA) or demo  [imagenet2012]
#   DATA     dataset folder with val_list.txt  [/dataset/imagenet]
#   OUT      output folder (metrics.json, logs; MODE=launch also writes its launch_logs/ there)  [output/eval_b224]
#   NPROCS   processes for MODE=cpu, and per node for MODE=launch without a GPU  [2]
#   GPUS     GPUs for MODE=launch  [0,1,2,3,4,5,6,7]
#   IPS      MODE=launch on several machines: their addresses, comma-separated; run the same command on each
# Arguments are passed on to main_multi_gpu.py, e.g. -amp.
set -eu
CFG=${CFG:-configs/repmlp_b_224.yaml}
WEIGHTS=${WEIGHTS:-repmlp_b_224.pdparams}
DATASET=${DATASET:-imagenet2012}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/eval_b224}
set -- -cfg "$CFG" -dataset "$DATASET" -data_path "$DATA" -output "$OUT" -eval -pretrained "$WEIGHTS" \
    -batch_size_eval 64 "$@"
ROOT=$(dirname "$0")
. "$ROOT/tools/multi_process.sh"
