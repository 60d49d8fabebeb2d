"""Helpers shared by the entry points: ranks, cross-rank sums and broadcasts, lost ranks, logging, meters, and the
command-line error wrapper. Weights and checkpoints are checkpoint.py's.

Every rank helper does the right thing in a single process (world size 1, no collective is called).
"""

import logging
import os
import re
import sys
import threading
import time
import traceback
import zlib

import numpy as np

import runtime  # before paddle: CPU threads, MKL path, stop signals
import paddle

from config import UserError


class RanksDisagree(UserError):
    """Ranks of one job that would train differently: other parameters, configs or checkpoints than rank 0's."""


class LostRank(UserError):
    """A collective failed: another rank's process or node stopped, or did not answer within the timeout."""


class PeerFailure(UserError):
    """Another rank failed with a UserError that it reports itself; this rank stops with it."""


LOGGER_NAME = 'repmlp'


def get_world_size():
    """The number of processes of the job; 1 when no parallel environment was initialised."""
    return paddle.distributed.get_world_size() if paddle.distributed.is_initialized() else 1


def get_rank():
    """This process's rank in the job; 0 when no parallel environment was initialised."""
    return paddle.distributed.get_rank() if paddle.distributed.is_initialized() else 0


def is_main_process():
    """True on the rank that writes files and prints to the console."""
    return get_rank() == 0


def all_reduce_sum(values):
    """The element-wise sum over all ranks of a list of numbers, as a float64 numpy array."""
    array = np.asarray(values, dtype=np.float64)
    if get_world_size() == 1:
        return array
    tensor = paddle.to_tensor(array)
    paddle.distributed.all_reduce(tensor)
    return tensor.numpy()


def gather_objects(obj):
    """[obj of rank 0, obj of rank 1, ...]: every rank's picklable `obj`, on every rank."""
    if get_world_size() == 1:
        return [obj]
    gathered = []
    paddle.distributed.all_gather_object(gathered, obj)
    return gathered


def on_main_process(read):
    """The value of `read()` computed on rank 0 alone and given to every rank (paddle tensors as numpy arrays).

    Files that the other nodes may not have (a checkpoint or weights on node 0's own disk, when the nodes share
    no filesystem) are read once, where rank 0 finds them. With world size 1 this is `read()`. A UserError of
    rank 0 stops every rank: the original on rank 0, a PeerFailure with its message on the others.
    """
    if get_world_size() == 1:
        return read()
    box, error = [None], None
    if is_main_process():
        try:
            box = [('value', _host_copy(read()))]
        except UserError as err:
            box, error = [('error', str(err))], err
    paddle.distributed.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if error is not None:
        raise error
    if kind == 'error':
        raise PeerFailure(f'rank 0: {value}')
    return value


def _host_copy(obj):
    """`obj` with every paddle tensor inside dicts, lists and tuples replaced by a numpy copy (picklable)."""
    if isinstance(obj, paddle.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return type(obj)((key, _host_copy(value)) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(value) for value in obj)
    return obj


JOB_WIDE_ERRORS = (PeerFailure, RanksDisagree, LostRank)


class Heartbeat:
    """Each rank's pulse in the job's key-value store (the TCP store that rank 0 serves): a counter that a daemon
    thread raises every INTERVAL seconds. After a collective failed, `lost_ranks` tells the survivors which ranks
    stopped counting, or that rank 0 itself (and the store) is gone."""

    INTERVAL = 0.5  # seconds between two beats
    SILENCE = 3.0  # seconds without a beat after which a rank counts as lost

    def __init__(self):
        from paddle.base import core  # the store that init_parallel_env created
        self.store = core.create_or_get_global_tcp_store()
        self.rank, self.world_size = get_rank(), get_world_size()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name='heartbeat', daemon=True)
        self.thread.start()

    def _beat(self):
        while not self.stopped.is_set():
            try:
                self.store.add(f'repmlp/heartbeat/{self.rank}', 1)
            except (RuntimeError, ValueError):  # the store's host (rank 0) is gone
                return
            self.stopped.wait(self.INTERVAL)

    def stop(self):
        """End the beats (before the process exits: the store must not be torn down under a beat in progress)."""
        self.stopped.set()
        self.thread.join()

    def lost_ranks(self):
        """The other ranks whose counter stood still for SILENCE seconds ([0] when the store cannot be reached)."""
        self.stop()
        try:
            before = self._counts()
            time.sleep(self.SILENCE)
            after = self._counts()
        except (RuntimeError, ValueError):
            return [0]
        return [rank for rank in range(self.world_size) if rank != self.rank and after[rank] == before[rank]]

    def _counts(self):
        return [self.store.add(f'repmlp/heartbeat/{rank}', 0) for rank in range(self.world_size)]


# What Paddle's collectives raise when a peer is gone: gloo's "TIMEOUT ... pair_rank = N" and connection errors,
# NCCL's timeouts and remote errors
COLLECTIVE_FAILURE = re.compile(r'gloo|nccl|connection (closed|reset)|timeout', re.IGNORECASE)


def report_lost_ranks(run, save_folder, heartbeat, newest_checkpoint):
    """`run()`, with a collective's failure turned into one LostRank line naming the lost ranks (by `heartbeat`),
    the last checkpoint (`newest_checkpoint(save_folder)`, a path or None) and how to continue."""
    try:
        return run()
    except RuntimeError as err:
        text = str(err).strip()
        if get_world_size() == 1 or not COLLECTIVE_FAILURE.search(text):
            raise
        lost = heartbeat.lost_ranks()
        who = ('rank(s) ' + ', '.join(str(rank) for rank in lost)) if lost else 'another rank'
        found = newest_checkpoint(save_folder)
        last = f'the last checkpoint in {save_folder} is {os.path.basename(found)}' if found else \
            f'no checkpoint in {save_folder} yet'
        cause = text.splitlines()[-1][:160] if text else type(err).__name__
        raise LostRank(f'rank {get_rank()} lost {who} (no heartbeat for {heartbeat.SILENCE:g} s after a collective '
                       f'failed: {cause}); {last}; rerun the same command with -resume auto on every node to '
                       'continue') from None


@paddle.no_grad()
def average_gradients(parameters):
    """Replace the gradient of each of `parameters` by its mean over the ranks: one all-reduce of all of them."""
    grads = [param.grad for param in parameters if param.grad is not None]
    flat = paddle.concat([grad.reshape([-1]) for grad in grads])
    paddle.distributed.all_reduce(flat)
    flat = flat / get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset:offset + grad.size].reshape(grad.shape), False)
        offset += grad.size


def running_statistics(layer):
    """The state that training changes without gradients: BN running means and variances.

    Paddle keeps them as parameters with stop_gradient=True, not as buffers; both kinds are returned.
    """
    return [param for param in layer.parameters() if param.stop_gradient] + list(layer.buffers())


def trained_parameters(layer):
    """The parameters that the optimizer updates."""
    return [param for param in layer.parameters() if not param.stop_gradient]


def broadcast_running_statistics(layer):
    """Give every rank rank 0's BN statistics, which each rank otherwise updates from its own images only."""
    if get_world_size() == 1:
        return
    for tensor in running_statistics(layer):
        paddle.distributed.broadcast(tensor, src=0)


def check_parameters_agree(layer, when):
    """Raise RanksDisagree on every rank unless every rank holds bit for bit rank 0's trained parameters.

    Data-parallel ranks apply the same all-reduced gradients, so any difference means that they started from
    different weights or states (e.g. a rank that did not resume); training on would average unrelated models.
    Compares a checksum per parameter, gathered from all ranks.
    """
    if get_world_size() == 1:
        return
    trained = [(name, param) for name, param in layer.named_parameters() if not param.stop_gradient]
    names = [name for name, _ in trained]
    sums = [zlib.crc32(param.numpy().tobytes()) for _, param in trained]
    per_rank = gather_objects(sums)
    differing = {rank: [name for name, mine, main in zip(names, sums_of_rank, per_rank[0]) if mine != main]
                 for rank, sums_of_rank in enumerate(per_rank)}
    differing = {rank: found for rank, found in differing.items() if found}
    if differing:
        ranks = ', '.join(str(rank) for rank in differing)
        first = next(iter(differing.values()))
        raise RanksDisagree(f'{when}, the parameters of rank(s) {ranks} differ from rank 0\'s ({len(first)} of '
                            f'{len(names)}, e.g. {first[0]}): the ranks did not start from the same state; stopped')


def setup_logger(output_dir):
    """The run's logger: rank 0 to the console and `output_dir`/log.txt, rank r > 0 to log_rank{r}.txt only."""
    rank = get_rank()
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter('[%(asctime)s] %(message)s', datefmt='%Y-%m-%d %H:%M:%S')
    os.makedirs(output_dir, exist_ok=True)
    handlers = [logging.FileHandler(os.path.join(output_dir, 'log.txt' if rank == 0 else f'log_rank{rank}.txt'))]
    if rank == 0:
        handlers.append(logging.StreamHandler(sys.stdout))
    for handler in handlers:
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


class AverageMeter:
    """A running sum and count of a value, on the host: `local_avg` on this rank, `global_avg` over all ranks."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, count=1):
        """Add `value` (a mean over `count` samples)."""
        self.sum += value * count
        self.count += count

    def local_avg(self):
        """The mean on this rank alone (no collective)."""
        return self.sum / self.count if self.count else 0.0

    def global_avg(self):
        """The mean over all ranks (a collective: every rank must call it at the same point)."""
        total, count = all_reduce_sum([self.sum, self.count])
        return total / count if count else 0.0


def run_cli(main):
    """Call `main()` and return what it returns (a program's exit code: `sys.exit(run_cli(main))`); a UserError
    becomes one `error: ...` line on stderr and exit code 2, not a traceback.

    Errors that every rank meets together (JOB_WIDE_ERRORS: rank 0's error passed on, ranks that disagree, a lost
    rank) are printed by the first rank of each node only, so that each node's console says it once. A stop
    signal (runtime.StopRequested) prints its one line the same way and exits with 128 + the signal number (130
    for SIGINT, 143 for SIGTERM), as shells report a process ended by it.
    """
    first_of_node = os.environ.get('PADDLE_LOCAL_RANK', str(get_rank())) == '0'
    try:
        return main()
    except UserError as err:
        if first_of_node or not isinstance(err, JOB_WIDE_ERRORS):
            print(f'error: {one_line(err)}', file=sys.stderr)
        code, stopped = 2, err
    except runtime.StopRequested as stop:  # every rank got the signal: one line per node
        if first_of_node and not stop.quiet:
            print(stop.message, file=sys.stderr)
        code, stopped = 128 + stop.signum, stop
    # free the frames of the failed run now: their loader iterators shut their worker processes down cleanly, which
    # Python's exit would otherwise terminate, and Paddle's SIGCHLD handler would print that as an error
    traceback.clear_frames(stopped.__traceback__)
    del stopped
    sys.exit(code)


def one_line(err):
    """The message of a UserError; for one re-raised by a DataLoader worker, the original message and the worker.

    Paddle re-raises a worker's exception in the main process with the worker's whole traceback as its
    message; the user needs its last line (`module.DatasetError: file: cannot read image ...`).
    """
    text = str(err).strip()
    match = re.match(r'DataLoader (worker\(\d+\)) caught \w+ with message:', text)
    if not match:
        return text
    last = text.splitlines()[-1]
    return f'{last.split(": ", 1)[-1]} (in DataLoader {match.group(1)})'
