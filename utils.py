"""Helpers shared by the entry points: ranks and cross-rank sums, logging, meters, checkpoints (one schema, one
save, one load), strict weight loading, and the command-line error wrapper.

Every rank helper does the right thing in a single process (world size 1, no collective is called).
"""

import glob
import json
import logging
import os
import re
import sys
import threading
import time
import traceback
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw

import runtime  # before paddle: CPU threads, MKL path, stop signals
import paddle

from config import UserError


class CheckpointError(UserError):
    """A weights file that is missing, unreadable, or does not match the model."""


class RanksDisagree(UserError):
    """Ranks of one job that would train differently: other parameters, configs or checkpoints than rank 0's."""


class LostRank(UserError):
    """A collective failed: another rank's process or node stopped, or did not answer within the timeout."""


class PeerFailure(UserError):
    """Another rank failed with a UserError that it reports itself; this rank stops with it."""


# What every training checkpoint holds; `epoch` counts the epochs done, `config` is the resolved yaml text.
CHECKPOINT_KEYS = ('model', 'optimizer', 'lr_scheduler', 'scaler', 'ema', 'epoch', 'best_acc1', 'config')
CHECKPOINT_NAME = 'checkpoint-{epoch:04d}.pdparams'
CHECKPOINT_RE = re.compile(r'checkpoint-(\d+)\.pdparams$')
LOGGER_NAME = 'repmlp'
CLASSIFIER_PREFIX = 'head.'  # the keys that fine-tuning to other classes leaves out: the final Linear


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


def report_lost_ranks(run, save_folder, heartbeat):
    """`run()`, with a collective's failure turned into one LostRank line naming the lost ranks (by `heartbeat`),
    the last checkpoint and how to continue."""
    try:
        return run()
    except RuntimeError as err:
        text = str(err).strip()
        if get_world_size() == 1 or not COLLECTIVE_FAILURE.search(text):
            raise
        lost = heartbeat.lost_ranks()
        who = ('rank(s) ' + ', '.join(str(rank) for rank in lost)) if lost else 'another rank'
        found = list_checkpoints(save_folder)
        last = f'the last checkpoint in {save_folder} is {os.path.basename(found[-1])}' if found else \
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
    names = [name for name, param in layer.named_parameters() if not param.stop_gradient]
    sums = [zlib.crc32(param.numpy().tobytes()) for name, param in layer.named_parameters() if not param.stop_gradient]
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


def write_json(obj, path, append=False):
    """Write `obj` as one JSON line to `path` (appended, or replacing the file atomically)."""
    line = json.dumps(obj, sort_keys=True) + '\n'
    if append:
        with open(path, 'a', encoding='utf-8') as file:
            file.write(line)
        return
    temporary = f'{path}.tmp{os.getpid()}'
    with open(temporary, 'w', encoding='utf-8') as file:
        file.write(line)
    os.replace(temporary, path)


def drop_epochs_after(log_path, epoch):
    """Remove the lines of epochs after `epoch` from a run's log.jsonl (the epochs a resumed run does again)."""
    if not os.path.isfile(log_path):
        return
    with open(log_path, encoding='utf-8') as file:
        lines = [line for line in file if line.strip()]
    kept = [line for line in lines if json.loads(line).get('epoch', 0) <= epoch]
    if len(kept) < len(lines):
        temporary = f'{log_path}.tmp{os.getpid()}'
        with open(temporary, 'w', encoding='utf-8') as file:
            file.writelines(kept)
        os.replace(temporary, log_path)


class AverageMeter:
    """A running sum and count of a value, on the host; `avg` is their ratio."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value, count=1):
        """Add `value` (a mean over `count` samples)."""
        self.sum += value * count
        self.count += count

    @property
    def avg(self):
        """The mean so far; 0.0 before any update."""
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


def not_found_hint(path):
    """'; did you mean PATH.pdparams?' when only that exists (PaddleViT's scripts give weights without the
    extension), else ''."""
    return f'; did you mean {path}.pdparams?' if os.path.isfile(path + '.pdparams') else ''


def read_state_dict(path):
    """Read a Paddle weights file (`.pdparams`, or a training checkpoint holding one under 'model')."""
    if not os.path.isfile(path):
        raise CheckpointError(f'weights file not found: {path}{not_found_hint(path)}')
    if _is_torch_file(path):
        raise CheckpointError(f'{path} is a PyTorch checkpoint; convert it first with '
                              f'tools/convert_torch_weights.py -cfg CFG -src {path} -dst OUT.pdparams')
    try:
        state = paddle.load(path)
    except Exception as err:  # paddle raises many types for a file that is not its format
        raise CheckpointError(f'{path} is not a Paddle weights file ({type(err).__name__}: {err})') from None
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f'{path} holds no state dict')
    return state


def _is_torch_file(path):
    """torch.save writes a zip archive with a data.pkl; paddle.save writes a plain pickle."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('data.pkl') for name in archive.namelist())


def check_state_dict(model, state, source):
    """Raise CheckpointError unless `state` has exactly the keys and shapes of `model.state_dict()`.

    The message names every missing, unexpected and mis-shaped key (or says that a deploy-form file was given
    to a training-time model, or the reverse, and what to pass instead).
    """
    expected = {name: list(value.shape) for name, value in model.state_dict().items()}
    given = {name: list(np.shape(value)) for name, value in state.items()}
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(name for name in set(expected) & set(given) if expected[name] != given[name])
    if not (missing or unexpected or misshaped):
        return
    model_deploy, file_deploy = is_deploy_form(expected), is_deploy_form(given)
    if model_deploy is not None and file_deploy is not None and model_deploy != file_deploy:
        if file_deploy:
            raise CheckpointError(f'{source} holds deploy-form weights (locality injected) but the model is the '
                                  'training-time form; build it with -opts MODEL.DEPLOY True')
        raise CheckpointError(f'{source} holds training-time weights but the model is the deploy form; build it '
                              'with MODEL.DEPLOY False (tools/reparam.py makes a deploy file from it)')
    if all(name.startswith(CLASSIFIER_PREFIX) for name in missing + unexpected + misshaped):
        shapes = ', '.join(f'{name} {given.get(name)} (model {expected.get(name)})' for name in missing + unexpected
                           + misshaped)
        raise CheckpointError(f'{source}: only the classifier differs from the model: {shapes}; set MODEL.NUM_CLASSES '
                              'to the number of classes of the file, or add -finetune to train a new classifier')
    problems = []
    if missing:
        problems.append(f'{len(missing)} missing: {_first(missing)}')
    if unexpected:
        problems.append(f'{len(unexpected)} unexpected: {_first(unexpected)}')
    if misshaped:
        problems.append(f'{len(misshaped)} with another shape: ' + _first(
            [f'{name} {given[name]} (model {expected[name]})' for name in misshaped]))
    raise CheckpointError(f'{source} does not match the model (is it another variant or NUM_CLASSES?): '
                          + '; '.join(problems))


def _first(names, count=6):
    shown = ', '.join(names[:count])
    return shown + (f', ... ({len(names) - count} more)' if len(names) > count else '')


def is_deploy_form(shapes):
    """True for locality-injected weights, False for training-time ones, None when there is no RepMLP block.

    `shapes` is a state dict or any mapping whose keys are parameter names.
    """
    if any(name.endswith('.fc3_bn.weight') for name in shapes):
        return False
    if any(name.endswith('.fc3.bias') for name in shapes):
        return True
    return None


def load_weights(model, path):
    """Load the weights file at `path` into `model`, strictly: every key and shape must match.

    In a parallel job only rank 0 reads the file (see `on_main_process`)."""
    state = on_main_process(lambda: read_state_dict(path))
    check_state_dict(model, state, path)
    model.set_state_dict(state)
    return model


def load_weights_except_head(model, path):
    """Load `path` into `model` for fine-tuning: every weight but the classifier (CLASSIFIER_PREFIX keys).

    The model's own, freshly initialised head is kept whatever the file holds, so the file may come from a model
    with any NUM_CLASSES (or none). Every other key and shape must match exactly, as in `load_weights`
    (CheckpointError otherwise). Returns [(key, reason)] for the keys left out, for the caller to log. In a
    parallel job only rank 0 reads the file.
    """
    state = on_main_process(lambda: read_state_dict(path))
    own = model.state_dict()
    left_out = []
    for name in sorted(set(own) | set(state)):
        if not name.startswith(CLASSIFIER_PREFIX):
            continue
        if name not in state:
            reason = 'not in the file; kept as initialised'
        elif name not in own:
            reason = 'in the file but not in the model; ignored'
        else:
            reason = (f'new classifier: file {list(np.shape(state[name]))}, model {list(own[name].shape)}; '
                      'kept as initialised')
        left_out.append((name, reason))
    kept = {name: value for name, value in state.items() if not name.startswith(CLASSIFIER_PREFIX)}
    # the model's own head stands in for the file's, so that the strict check covers everything else
    kept.update({name: value for name, value in own.items() if name.startswith(CLASSIFIER_PREFIX)})
    check_state_dict(model, kept, path)
    model.set_state_dict(kept)
    return left_out


def save_atomically(obj, path):
    """paddle.save `obj` to `path` through a temporary file and a rename, so `path` is never half-written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        paddle.save(obj, temporary)
        with open(temporary, 'rb') as file:
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except OSError as err:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise CheckpointError(f'could not write {path}: {err.strerror or err}') from None


def save_checkpoint(folder, keep_last, **state):
    """Write a training checkpoint (the keys of CHECKPOINT_KEYS) atomically; keep the newest `keep_last`.

    Returns the path written. Older epoch checkpoints are deleted only after the new one is complete.
    """
    if set(state) != set(CHECKPOINT_KEYS):
        raise ValueError(f'checkpoint keys {sorted(state)} differ from the schema {sorted(CHECKPOINT_KEYS)}')
    path = os.path.join(folder, CHECKPOINT_NAME.format(epoch=state['epoch']))
    save_atomically(state, path)
    for old in list_checkpoints(folder)[:-keep_last]:
        os.remove(old)
    remove_stale_temporaries(folder)
    return path


def remove_stale_temporaries(folder):
    """Delete the temporaries of `save_atomically` that other processes left (a save killed half-way).

    They never look like checkpoints to `list_checkpoints`; this only frees their space. Only rank 0 saves,
    so a temporary of another process id in the run's folder is from an earlier, killed run.
    """
    for path in glob.glob(os.path.join(folder, '.*.tmp*')):
        if not path.endswith(f'.tmp{os.getpid()}'):
            os.remove(path)


def list_checkpoints(folder):
    """The epoch checkpoints in `folder`, oldest first."""
    found = [(int(match.group(1)), path) for path in glob.glob(os.path.join(folder, 'checkpoint-*.pdparams'))
             if (match := CHECKPOINT_RE.search(os.path.basename(path)))]
    return [path for _, path in sorted(found)]


def checkpoint_epoch(path):
    """The epoch in a checkpoint-NNNN.pdparams file name, or None (no path, or another name)."""
    match = CHECKPOINT_RE.search(os.path.basename(path)) if path else None
    return int(match.group(1)) if match else None


def resolve_resume(resume, folder):
    """The checkpoint that `-resume` names: the file itself, or for 'auto' the newest in `folder` (None if none)."""
    if resume != 'auto':
        return resume
    found = list_checkpoints(folder)
    return found[-1] if found else None


def load_checkpoint(path):
    """Read a training checkpoint written by `save_checkpoint`; CheckpointError if it is not one."""
    if not os.path.isfile(path):
        raise CheckpointError(f'checkpoint not found: {path} (-resume takes a checkpoint-NNNN.pdparams or auto)'
                              f'{not_found_hint(path)}')
    if _is_torch_file(path):
        raise CheckpointError(f'{path} is a PyTorch checkpoint, not one to resume from; convert it with '
                              f'tools/convert_torch_weights.py -cfg CFG -src {path} -dst OUT.pdparams and '
                              'start from it with -pretrained OUT.pdparams')
    try:
        state = paddle.load(path)
    except Exception as err:  # paddle raises many types for a file that is not its format
        raise CheckpointError(f'{path} is not a Paddle checkpoint ({type(err).__name__}: {err})') from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f'{path} is not a training checkpoint (no {", ".join(missing)}); to start from '
                              'weights only, use -pretrained instead of -resume')
    return state


def plot_training_curves(log_path, png_path):
    """Draw the per-epoch losses and top-1 accuracies of a run's log.jsonl as a PNG (PIL only, no plotting library).

    Left panel: train_loss and val_loss; right panel: val_acc1 (and ema_acc1 when logged). Epochs without
    validation leave gaps between points. Written atomically.
    """
    with open(log_path, encoding='utf-8') as file:
        epochs = [json.loads(line) for line in file if line.strip()]
    panels = [('loss', [('train_loss', (31, 119, 180)), ('val_loss', (255, 127, 14))]),
              ('top-1 accuracy', [('val_acc1', (44, 160, 44)), ('ema_acc1', (214, 39, 40))])]
    save_line_charts(epochs, 'epoch', panels, png_path)


def save_line_charts(rows, x_key, panels, png_path):
    """Draw `panels` [(title, [(key, colour)])] side by side against `x_key` of `rows` (dicts) as a PNG, atomically.

    A row without a key leaves a gap in that line; points are marked while there are few enough to see.
    """
    width, height, margin = 480, 320, 48
    image = Image.new('RGB', (width * len(panels), height), 'white')
    draw = ImageDraw.Draw(image)
    for index, (title, series) in enumerate(panels):
        _draw_panel(draw, rows, x_key, title, series, (index * width + margin, margin, (index + 1) * width - 16,
                                                       height - margin))
    temporary = f'{png_path}.tmp{os.getpid()}.png'
    image.save(temporary)
    os.replace(temporary, png_path)


def _draw_panel(draw, rows, x_key, title, series, box):
    """One chart of `series` [(key, colour)] against `x_key` inside `box` (left, top, right, bottom)."""
    left, top, right, bottom = box
    points = {key: [(row[x_key], row[key]) for row in rows if key in row] for key, _ in series}
    values = [v for pts in points.values() for _, v in pts]
    if not values:
        return
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    first, last = rows[0][x_key], max(rows[-1][x_key], rows[0][x_key] + 1)

    def to_xy(x, value):
        return (left + (x - first) / (last - first) * (right - left),
                bottom - (value - low) / (high - low) * (bottom - top))

    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((left, bottom + 6), f'{x_key} {first:.4g}', fill='black')
    last_label = f'{x_key} {last:.4g}'
    draw.text((right - draw.textlength(last_label), bottom + 6), last_label, fill='black')
    draw.text((left - 44, top), f'{high:.3g}', fill='black')
    draw.text((left - 44, bottom - 10), f'{low:.3g}', fill='black')
    draw.text((left, top - 40), title, fill='black')  # title and legend above the frame, clear of the lines
    legend_x = left
    for key, colour in series:
        if not points[key]:
            continue
        xy = [to_xy(x, value) for x, value in points[key]]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        if len(xy) <= (right - left) // 4:
            for x, y in xy:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((legend_x, top - 24), key, fill=colour)
        legend_x += draw.textlength(key) + 12
