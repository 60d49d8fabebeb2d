"""Weights and training checkpoints on disk, and the one safe way to replace a file.

- reading: `read_state_dict` (weights for -pretrained) and `load_checkpoint` (a checkpoint for -resume) share
  one reader with one-line errors; `check_state_dict` compares a file with the model, key by key;
- `load_weights` / `load_weights_except_head`: strict loading, read on rank 0 alone in a parallel job;
- the checkpoint schema (CHECKPOINT_KEYS), `save_checkpoint` with pruning to the newest KEEP_LAST, and what
  `-resume` picks (`resolve_resume`, `checkpoint_to_resume`);
- `write_atomically`: a temporary file beside the target, fsync, rename, fsync of the folder. Every file that a run
  replaces goes through it (checkpoints, best weights, metrics.json, the repaired log.jsonl, config.yaml, charts,
  the tools' outputs), so a crash or a full disk leaves the old file or the new one, never half of one.
"""

import errno
import glob
import json
import os
import re
import zipfile

import numpy as np

import runtime  # noqa: F401  (before paddle: CPU threads, MKL path, stop signals)
import paddle

import utils
from config import UserError


class CheckpointError(UserError):
    """A weights file that is missing, unreadable, or does not match the model."""


# What every training checkpoint holds; `epoch` counts the epochs done, `config` is the resolved yaml text.
CHECKPOINT_KEYS = ('model', 'optimizer', 'lr_scheduler', 'scaler', 'ema', 'epoch', 'best_acc1', 'config')
CHECKPOINT_NAME = 'checkpoint-{epoch:04d}.pdparams'
CHECKPOINT_RE = re.compile(r'checkpoint-(\d+)\.pdparams$')
CLASSIFIER_PREFIX = 'head.'  # the keys that fine-tuning to other classes leaves out: the final Linear
CONVERT_COMMAND = 'tools/convert_torch_weights.py -cfg CFG -src {path} -dst OUT.pdparams'

# The errors of `_read_paddle_file` for each use of a file: the flag it was given to says what the user must do.
READ_ERRORS = {
    'weights': {
        'not_found': 'weights file not found: {path}',
        'torch': '{path} is a PyTorch checkpoint; convert it first with ' + CONVERT_COMMAND,
        'not_paddle': '{path} is not a Paddle weights file',
    },
    'checkpoint': {
        'not_found': 'checkpoint not found: {path} (-resume takes a checkpoint-NNNN.pdparams or auto)',
        'torch': ('{path} is a PyTorch checkpoint, not one to resume from; convert it with ' + CONVERT_COMMAND
                  + ' and start from it with -pretrained OUT.pdparams'),
        'not_paddle': '{path} is not a Paddle checkpoint',
    },
}


# ---------------------------------------------------------------------------------------------- writing

def write_atomically(path, write):
    """Replace the file at `path` with what `write(temporary)` writes to the path `temporary`.

    The temporary (`.NAME.tmpPID`, hidden, in the same folder so that the rename stays on one filesystem) is
    synced to disk, renamed over `path` and the folder synced, so that after a crash `path` holds the old content
    or the new, whole. When `write` or the disk fails, the temporary is removed and `path` is untouched; an OSError
    becomes a CheckpointError naming `path`.
    """
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f'.{os.path.basename(path)}.tmp{os.getpid()}')
    try:
        os.makedirs(directory, exist_ok=True)
        write(temporary)
        with open(temporary, 'rb') as file:  # `write` closed it: its data is in the OS, not yet on the disk
            os.fsync(file.fileno())
        os.replace(temporary, path)
        _fsync_directory(directory)
    except BaseException as err:  # a stop signal or a bug in `write` must not leave the temporary either
        if os.path.exists(temporary):
            os.remove(temporary)
        if isinstance(err, OSError):
            raise CheckpointError(f'could not write {path}: {err.strerror or err}') from None
        raise


def _fsync_directory(directory):
    """Make the rename in `directory` durable. Filesystems that cannot sync a folder (EINVAL) keep it in order."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    finally:
        os.close(descriptor)


def write_text_atomically(path, text):
    """Replace the file at `path` with `text` (UTF-8), through `write_atomically`."""
    def write(temporary):
        with open(temporary, 'w', encoding='utf-8') as file:
            file.write(text)
    write_atomically(path, write)


def save_atomically(obj, path):
    """paddle.save `obj` to `path` through `write_atomically`, so `path` is never half-written."""
    write_atomically(path, lambda temporary: paddle.save(obj, temporary))


def write_json(obj, path, append=False):
    """Write `obj` as one JSON line to `path`: appended (a log), or replacing the file atomically."""
    line = json.dumps(obj, sort_keys=True) + '\n'
    if not append:
        write_text_atomically(path, line)
        return
    with open(path, 'a', encoding='utf-8') as file:
        file.write(line)


def drop_epochs_after(log_path, epoch):
    """Remove the lines of epochs after `epoch` from a run's log.jsonl (the epochs a resumed run does again)."""
    if not os.path.isfile(log_path):
        return
    with open(log_path, encoding='utf-8') as file:
        lines = [line for line in file if line.strip()]
    kept = [line for line in lines if json.loads(line).get('epoch', 0) <= epoch]
    if len(kept) < len(lines):
        write_text_atomically(log_path, ''.join(kept))


# ---------------------------------------------------------------------------------------------- reading

def not_found_hint(path):
    """'; did you mean PATH.pdparams?' when only that exists (PaddleViT's scripts give weights without the
    extension), else ''."""
    return f'; did you mean {path}.pdparams?' if os.path.isfile(path + '.pdparams') else ''


def _read_paddle_file(path, use):
    """paddle.load of `path`, given as `use` ('weights' or 'checkpoint'); a CheckpointError (READ_ERRORS[use])
    for a missing file, a PyTorch file, or one that is not in Paddle's format."""
    errors = READ_ERRORS[use]
    if not os.path.isfile(path):
        raise CheckpointError(errors['not_found'].format(path=path) + not_found_hint(path))
    if _is_torch_file(path):
        raise CheckpointError(errors['torch'].format(path=path))
    try:
        return paddle.load(path)
    except Exception as err:  # paddle raises many types for a file that is not its format
        raise CheckpointError(f'{errors["not_paddle"].format(path=path)} ({type(err).__name__}: {err})') from None


def _is_torch_file(path):
    """torch.save writes a zip archive with a data.pkl; paddle.save writes a plain pickle."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('data.pkl') for name in archive.namelist())


def read_state_dict(path):
    """Read a Paddle weights file (`.pdparams`, or a training checkpoint holding one under 'model')."""
    state = _read_paddle_file(path, 'weights')
    if isinstance(state, dict) and isinstance(state.get('model'), dict):
        state = state['model']
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f'{path} holds no state dict')
    return state


def load_checkpoint(path):
    """Read a training checkpoint written by `save_checkpoint`; CheckpointError if it is not one."""
    state = _read_paddle_file(path, 'checkpoint')
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f'{path} is not a training checkpoint (no {", ".join(missing)}); to start from '
                              'weights only, use -pretrained instead of -resume')
    return state


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


def set_state_strictly(model, state, source):
    """`model.set_state_dict(state)` once `check_state_dict` has found every key and shape of `model` in `state`
    (Paddle's own only warns); `source` names the state in the error."""
    check_state_dict(model, state, source)
    model.set_state_dict(state)


def load_weights(model, path):
    """Load the weights file at `path` into `model`, strictly: every key and shape must match.

    In a parallel job only rank 0 reads the file (see `utils.on_main_process`)."""
    set_state_strictly(model, utils.on_main_process(lambda: read_state_dict(path)), path)
    return model


def load_weights_except_head(model, path):
    """Load `path` into `model` for fine-tuning: every weight but the classifier (CLASSIFIER_PREFIX keys).

    The model's own, freshly initialised head is kept whatever the file holds, so the file may come from a model
    with any NUM_CLASSES (or none). Every other key and shape must match exactly, as in `load_weights`
    (CheckpointError otherwise). Returns [(key, reason)] for the keys left out, for the caller to log. In a
    parallel job only rank 0 reads the file.
    """
    state = utils.on_main_process(lambda: read_state_dict(path))
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
    set_state_strictly(model, kept, path)
    return left_out


# ------------------------------------------------------------------------------------ training checkpoints

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
    """Delete the temporaries of `write_atomically` that other processes left (a save killed half-way).

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


def newest_checkpoint(folder):
    """The epoch checkpoint of the highest epoch in `folder`, or None when there is none."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def checkpoint_epoch(path):
    """The epoch in a checkpoint-NNNN.pdparams file name, or None (no path, or another name)."""
    match = CHECKPOINT_RE.search(os.path.basename(path)) if path else None
    return int(match.group(1)) if match else None


def resolve_resume(resume, folder):
    """The checkpoint that `-resume` names: the file itself, or for 'auto' the newest in `folder` (None if none)."""
    return newest_checkpoint(folder) if resume == 'auto' else resume


def checkpoint_to_resume(config):
    """The checkpoint that every rank resumes from (None: none), as rank 0 resolves MODEL.RESUME in its SAVE.

    Ranks on nodes without a shared filesystem find no checkpoint of their own (only rank 0 writes them) and
    follow rank 0. A rank whose own SAVE resolves to a checkpoint of another epoch than rank 0's would be
    resuming another state: RanksDisagree on every rank.
    """
    if not config.MODEL.RESUME:
        return None
    mine = resolve_resume(config.MODEL.RESUME, config.SAVE)
    mine = mine if mine and os.path.isfile(mine) else None
    per_rank = utils.gather_objects((mine, checkpoint_epoch(mine)))
    chosen, chosen_epoch = per_rank[0]
    others = [(rank, path, epoch) for rank, (path, epoch) in enumerate(per_rank)
              if path is not None and rank > 0 and epoch != chosen_epoch]
    if others:
        rank, path, epoch = others[0]
        main = f'{chosen} (epoch {chosen_epoch})' if chosen else 'no checkpoint'
        raise utils.RanksDisagree(f'-resume {config.MODEL.RESUME}: rank {rank} finds {path} (epoch {epoch}) but '
                                  f'rank 0 {main}; give every node the same checkpoints, or remove the stray ones')
    return chosen
