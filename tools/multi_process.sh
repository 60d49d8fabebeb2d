# Sourced by run_train_multi.sh and run_eval_multi.sh (POSIX sh): starts main_multi_gpu.py with the arguments
# in "$@" the way MODE, NPROCS, GPUS, IPS and OUT say (see those scripts); ROOT is the repository.
case "${MODE:-spawn}" in
    spawn) exec python "$ROOT/main_multi_gpu.py" "$@" ;;
    cpu) exec python "$ROOT/main_multi_gpu.py" -nprocs "${NPROCS:-2}" "$@" ;;
    launch)
        if [ "$(cd "$ROOT" && python -c 'import runtime, paddle; print(paddle.device.cuda.device_count())')" -gt 0 ]
        then
            devices="--gpus ${GPUS:-0,1,2,3,4,5,6,7}"
        else
            devices="--nproc_per_node ${NPROCS:-2}"
        fi
        # the launcher's own import of paddle warns about a missing ccache (unused here); --log_level ERROR keeps
        # its INFO lines out of the console (they stay in launch_logs)
        PYTHONWARNINGS="ignore:No ccache found${PYTHONWARNINGS:+,$PYTHONWARNINGS}"
        export PYTHONWARNINGS
        # shellcheck disable=SC2086  # $devices is two words
        exec python -m paddle.distributed.launch $devices ${IPS:+--ips "$IPS"} --log_dir "$OUT/launch_logs" --log_level ERROR \
            "$ROOT/main_multi_gpu.py" "$@" ;;
    *) echo "error: MODE must be spawn, launch or cpu, got '$MODE'" >&2; exit 2 ;;
esac
