"""Write the deploy form (locality injected) of training-time RepMLPNet weights, and check that it is the same network.

    python tools/reparam.py -cfg configs/repmlp_b_224.yaml -src repmlp_b_224.pdparams -dst repmlp_b_224_deploy.pdparams

The deploy file loads into the model built with `-opts MODEL.DEPLOY True`: every block's fc3 has a bias and
there are no conv branches and no fc3 BN. Both models run on the same random images before anything is
written; a relative difference of the logits above 1e-4 stops the program (exit code 2).
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402,F401  (before paddle: CPU threads and MKL path)
import paddle  # noqa: E402

from config import UserError, build_arg_parser, get_config, update_config  # noqa: E402
from repmlp import build_repmlp  # noqa: E402
from checkpoint import (CheckpointError, check_state_dict, is_deploy_form, read_state_dict,  # noqa: E402
                        save_atomically)
from utils import run_cli  # noqa: E402

TOLERANCE = 1e-4  # largest relative difference of the logits accepted between two forms of one network
CHECK_BATCH = 2  # random images each form is compared on


def relative_difference(output, reference):
    """Largest absolute difference, relative to the largest magnitude of the reference."""
    output, reference = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(output - reference).max() / max(np.abs(reference).max(), 1e-30))


def random_images(config, batch=CHECK_BATCH, seed=0):
    """Normalised-looking float32 inputs [batch, 3, IMAGE_SIZE, IMAGE_SIZE], the same for every form compared."""
    size = config.DATA.IMAGE_SIZE
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def with_deploy(config, deploy):
    """A frozen copy of `config` with MODEL.DEPLOY set."""
    config = config.clone()
    config.defrost()
    config.MODEL.DEPLOY = deploy
    config.freeze()
    return config


def load_model(config, path):
    """The model of `config` in the form of the weights file at `path` (detected from its keys), loaded
    strictly, in eval mode; returns (model, deploy)."""
    state = read_state_dict(path)
    deploy = bool(is_deploy_form(state))
    model = build_repmlp(with_deploy(config, deploy))
    check_state_dict(model, state, path)
    model.set_state_dict(state)
    model.eval()
    return model, deploy


def check_close(output, reference, what):
    """The largest relative difference of `output` from `reference`; UserError naming `what` above TOLERANCE."""
    difference = relative_difference(output, reference)
    if not difference <= TOLERANCE:
        raise UserError(f'{what} differs from the training-time model by {difference:.2e} relative (more than '
                        f'{TOLERANCE:g}); nothing was written')
    return difference


def run_model(model, images):
    """Logits of `model` on the numpy `images`, as numpy."""
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def reparam(config, src, dst):
    """Write the deploy form of the training-time weights `src` to `dst`; returns the relative difference."""
    model, deploy = load_model(config, src)
    if deploy:
        raise CheckpointError(f'{src} already holds deploy-form weights; load it with -opts MODEL.DEPLOY True')
    images = random_images(config)
    expected = run_model(model, images)
    model.locality_injection()
    state = model.state_dict()
    deploy_model = build_repmlp(with_deploy(config, True))
    check_state_dict(deploy_model, state, 'the injected model')
    deploy_model.set_state_dict(state)
    deploy_model.eval()
    difference = check_close(run_model(deploy_model, images), expected, 'the deploy form')
    save_atomically(state, dst)
    return difference


def main():
    parser = build_arg_parser('Write the deploy form (locality injected) of training-time RepMLPNet weights.')
    parser.add_argument('-src', required=True, help='training-time .pdparams (or a training checkpoint)')
    parser.add_argument('-dst', required=True, help='the deploy-form .pdparams to write')
    args = parser.parse_args()
    config = update_config(get_config(), args)
    difference = reparam(config, args.src, args.dst)
    print(f'{args.src}: {config.MODEL.NAME}, locality injected; largest relative difference of the logits '
          f'{difference:.1e}; wrote {args.dst} (load it with -opts MODEL.DEPLOY True)')


if __name__ == '__main__':
    run_cli(main)
