"""Helpers shared by the entry points: strict weight loading and the command-line error wrapper."""

import os
import sys
import zipfile

import numpy as np
import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)
import paddle

from config import UserError


class CheckpointError(UserError):
    """A weights file that is missing, unreadable, or does not match the model."""


def run_cli(main):
    """Call `main()`; a UserError becomes one `error: ...` line on stderr and exit code 2, not a traceback."""
    try:
        main()
    except UserError as err:
        print(f'error: {err}', file=sys.stderr)
        sys.exit(2)


def read_state_dict(path):
    """Read a Paddle weights file (`.pdparams`, or a training checkpoint holding one under 'model')."""
    if not os.path.isfile(path):
        raise CheckpointError(f'weights file not found: {path}')
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
    model_deploy, file_deploy = _is_deploy_form(expected), _is_deploy_form(given)
    if model_deploy is not None and file_deploy is not None and model_deploy != file_deploy:
        if file_deploy:
            raise CheckpointError(f'{source} holds deploy-form weights (locality injected) but the model is the '
                                  'training-time form; build it with -opts MODEL.DEPLOY True')
        raise CheckpointError(f'{source} holds training-time weights but the model is the deploy form; build it '
                              'with MODEL.DEPLOY False (tools/reparam.py makes a deploy file from it)')
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


def _is_deploy_form(shapes):
    """True for locality-injected weights, False for training-time ones, None when there is no RepMLP block."""
    if any(name.endswith('.fc3_bn.weight') for name in shapes):
        return False
    if any(name.endswith('.fc3.bias') for name in shapes):
        return True
    return None


def load_weights(model, path):
    """Load the weights file at `path` into `model`, strictly: every key and shape must match."""
    state = read_state_dict(path)
    check_state_dict(model, state, path)
    model.set_state_dict(state)
    return model


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
