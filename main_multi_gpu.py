"""Train or evaluate RepMLPNet data-parallel (paddle.DataParallel) over several processes.

Run directly, it spawns one process per visible GPU (or -nprocs N of them), or -nprocs N CPU processes that
communicate over gloo on a machine without a GPU. Started by `python -m paddle.distributed.launch` (one
machine, or several with --ips / --master), it is one of the processes of that job and joins it instead.
See run_train_multi.sh and run_eval_multi.sh.
"""

import contextlib
import ctypes
import ctypes.util
import io
import multiprocessing.connection
import os
import signal
import sys
import time

import runtime
import paddle

import checkpoint
import engine
import utils
from config import ConfigError, build_arg_parser, get_config, update_config
from utils import run_cli

# Environment variables that paddle.distributed.launch sets for each process it starts.
LAUNCH_ENV = ('PADDLE_TRAINER_ID', 'PADDLE_TRAINERS_NUM', 'PADDLE_TRAINER_ENDPOINTS')


PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent dies


def die_with_parent():
    """On Linux, have this rank killed when the process that started it (the launcher, or the spawning
    main_multi_gpu.py) dies: a rank whose node's launcher was killed would otherwise train on alone, and the
    other nodes would never learn that the node is gone."""
    if not sys.platform.startswith('linux'):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def worker(config):
    """One rank: join the parallel environment, then run. A user error ends this rank with exit code 2, and so
    does the loss of another rank (a collective that failed or waited past its timeout)."""
    die_with_parent()
    os.environ.setdefault('PADDLE_PG_TIMEOUT', str(config.DIST_TIMEOUT * 1000))  # NCCL's, in milliseconds
    with contextlib.redirect_stderr(io.StringIO()):  # Paddle's "Modified FLAGS detected" banner
        paddle.distributed.init_parallel_env()
    heartbeat = utils.Heartbeat()
    try:
        run_cli(lambda: utils.report_lost_ranks(lambda: engine.run(config), config.SAVE, heartbeat,
                                                checkpoint.newest_checkpoint))
    finally:
        heartbeat.stop()


def spawn(config, nprocs):
    """Start `nprocs` ranks on this machine (GPUs over NCCL, else CPU processes over gloo); wait for all.

    When a rank fails, the others are stopped and this process exits with the failed rank's code; a rank that
    crashed without its own error line is named here. A stop signal is passed on to the ranks.
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
        failed = wait_for_ranks(context.processes)
    except runtime.StopRequested as stop:
        stop_ranks(context.processes, stop.signum)
        sys.exit(128 + stop.signum)  # the ranks printed where they stopped
    if failed is not None:
        rank, code = failed
        if code != 2:  # 2: the rank printed its error line itself (utils.run_cli)
            how = f'signal {signal.Signals(-code).name}' if code < 0 else f'exit code {code}'
            print(f'error: rank {rank} failed ({how}), the job was stopped', file=sys.stderr)
        sys.exit(code if code > 0 else 1)


def wait_for_ranks(processes):
    """Wait until every rank has ended, or one failed: then stop the others with runtime.PEER_FAILED, a stop they
    do not report (Paddle's spawn would send SIGTERM, which they would report as a stop of their own). Returns
    (rank, exit code) of the failed rank, or None."""
    running = {process.sentinel: rank for rank, process in enumerate(processes)}
    while running:
        for sentinel in multiprocessing.connection.wait(list(running)):
            rank = running.pop(sentinel)
            processes[rank].join()
            if processes[rank].exitcode != 0:
                stop_ranks([processes[other] for other in running.values()], runtime.PEER_FAILED)
                return rank, processes[rank].exitcode
    return None


def stop_ranks(processes, signum, grace=30):
    """Send `signum` to the ranks (a stop signal sent to this process alone, or PEER_FAILED) and wait for their
    clean stop; a rank still running after `grace` seconds is killed. Ranks that got a stop signal already
    (Ctrl-C to the process group) ignore the second one."""
    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signum)
    deadline = time.time() + grace
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.time()))
        if process.is_alive():
            process.kill()
            process.join()


def main(argv=None):
    """Parse the flags and resolve the config, then join a launched job or spawn the ranks; returns the exit code."""
    parser = build_arg_parser('Train or evaluate RepMLPNet data-parallel over several processes.')
    parser.add_argument('-nprocs', type=int, default=None,
                        help='processes to spawn: default one per visible GPU; required on a machine without GPU')
    args = parser.parse_args(argv)
    config = update_config(get_config(), args)
    if all(name in os.environ for name in LAUNCH_ENV):
        worker(config)
    else:
        spawn(config, args.nprocs)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
