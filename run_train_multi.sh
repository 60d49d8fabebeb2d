#!/usr/bin/env bash
# Data-parallel training with the official recipe (8 GPUs x 32 images = its global batch of 256).
#   ./run_train_multi.sh                     spawn one process per visible GPU (CUDA_VISIBLE_DEVICES selects them)
#   MODE=launch ./run_train_multi.sh         the same through paddle.distributed.launch
#   MODE=launch IPS=10.0.0.1,10.0.0.2 ./run_train_multi.sh
#                                            several machines: run the same command on each of them
#   MODE=cpu NPROCS=2 ./run_train_multi.sh   NPROCS CPU processes over gloo (no GPU; for trying things out)
# Extra arguments are passed on, e.g. -amp, or -opts TRAIN.NUM_EPOCHS 10.
set -euo pipefail
CFG=${CFG:-configs/repmlp_b_224.yaml}
RECIPE=${RECIPE:-configs/recipes/official.yaml}
DATA=${DATA:-/dataset/imagenet}
OUT=${OUT:-output/train_b224}
ARGS=(-cfg "$CFG" "$RECIPE" -dataset imagenet2012 -data_path "$DATA" -output "$OUT" -batch_size 32 -resume auto)
case "${MODE:-spawn}" in
    spawn) python main_multi_gpu.py "${ARGS[@]}" "$@" ;;
    launch) python -m paddle.distributed.launch --gpus "${GPUS:-0,1,2,3,4,5,6,7}" ${IPS:+--ips "$IPS"} \
                --log_dir "$OUT/launch_logs" main_multi_gpu.py "${ARGS[@]}" "$@" ;;
    cpu) python main_multi_gpu.py -nprocs "${NPROCS:-2}" "${ARGS[@]}" "$@" ;;
    *) echo "MODE must be spawn, launch or cpu" >&2; exit 2 ;;
esac
