"""Train or evaluate RepMLPNet data-parallel (paddle.DataParallel) over several processes.

Run directly, it spawns one process per visible GPU (or -nprocs N of them), or -nprocs N CPU processes that
communicate over gloo on a machine without a GPU. Started by `python -m paddle.distributed.launch` (one
machine, or several with --ips / --master), it is one of the processes of that job and joins it instead.
See run_train_multi.sh and run_eval_multi.sh.
"""

import os
import sys

import runtime
import paddle

import engine
from config import ConfigError, build_arg_parser, get_config, update_config
from utils import run_cli

# Environment variables that paddle.distributed.launch sets for each process it starts.
LAUNCH_ENV = ('PADDLE_TRAINER_ID', 'PADDLE_TRAINERS_NUM', 'PADDLE_TRAINER_ENDPOINTS')


def worker(config):
    """One rank: join the parallel environment, then run. A user error ends this rank with exit code 2."""
    paddle.distributed.init_parallel_env()
    run_cli(lambda: engine.run(config))


def spawn(config, nprocs):
    """Start `nprocs` ranks on this machine (GPUs over NCCL, else CPU processes over gloo); wait for all.

    When a rank fails, the others are stopped and this process exits with the failed rank's code.
    """
    gpus = paddle.device.cuda.device_count()
    nprocs = nprocs or gpus
    if nprocs < 1:
        raise ConfigError('no GPU is visible: give -nprocs N to run N CPU processes (or use main_single_gpu.py)')
    if gpus and nprocs > gpus:
        raise ConfigError(f'-nprocs {nprocs} is more than the {gpus} visible GPUs')
    if not gpus and not runtime.THREADS_SET_BY_USER:
        # the children inherit this before they import paddle; cores are shared, not multiplied
        os.environ['OMP_NUM_THREADS'] = str(max(1, runtime.usable_cores() // nprocs))
    context = paddle.distributed.spawn(worker, args=(config,), nprocs=nprocs, backend='nccl' if gpus else 'gloo',
                                       join=False)
    try:
        while not context.join():
            pass
    except Exception as err:  # paddle reports a failed rank as a plain Exception after stopping the others
        print(f'error: a rank failed, the job was stopped: {str(err).strip()}', file=sys.stderr)
        codes = [process.exitcode for process in context.processes]
        sys.exit(next((code for code in codes if code and code > 0), 1))


def main():
    """Parse the flags and resolve the config, then join a launched job or spawn the ranks."""
    parser = build_arg_parser('Train or evaluate RepMLPNet data-parallel over several processes.')
    parser.add_argument('-nprocs', type=int, default=None,
                        help='processes to spawn: default one per visible GPU; required on a machine without GPU')
    args = parser.parse_args()
    config = update_config(get_config(), args)
    if all(name in os.environ for name in LAUNCH_ENV):
        worker(config)
    else:
        spawn(config, args.nprocs)


if __name__ == '__main__':
    run_cli(main)
