#!/usr/bin/env bash
# Data-parallel evaluation of a .pdparams: every validation image is counted once whatever the process count;
# writes $OUT/metrics.json (acc1, acc5 as fractions, loss, num_images).
#   ./run_eval_multi.sh                      spawn one process per visible GPU
#   MODE=launch ./run_eval_multi.sh          through paddle.distributed.launch (add IPS=... for several machines)
#   MODE=cpu NPROCS=2 ./run_eval_multi.sh    NPROCS CPU processes over gloo
set -euo pipefail
CFG=${CFG:-configs/repmlp_b_224.yaml}
WEIGHTS=${WEIGHTS:-repmlp_b_224.pdparams}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/eval_b224}
ARGS=(-cfg "$CFG" -dataset imagenet2012 -data_path "$DATA" -output "$OUT" -eval -pretrained "$WEIGHTS"
      -batch_size_eval 64)
case "${MODE:-spawn}" in
    spawn) python main_multi_gpu.py "${ARGS[@]}" "$@" ;;
    launch) python -m paddle.distributed.launch --gpus "${GPUS:-0,1,2,3,4,5,6,7}" ${IPS:+--ips "$IPS"} \
                --log_dir "$OUT/launch_logs" main_multi_gpu.py "${ARGS[@]}" "$@" ;;
    cpu) python main_multi_gpu.py -nprocs "${NPROCS:-2}" "${ARGS[@]}" "$@" ;;
    *) echo "MODE must be spawn, launch or cpu" >&2; exit 2 ;;
esac
