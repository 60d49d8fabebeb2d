"""Write the deploy form (locality injected) of training-time RepMLPNet weights, and check that it is the same network.

    python tools/reparam.py -cfg configs/repmlp_b_224.yaml -src repmlp_b_224.pdparams -dst repmlp_b_224_deploy.pdparams

The deploy file loads into the model built with `-opts MODEL.DEPLOY True`: every block's fc3 has a bias and
there are no conv branches and no fc3 BN. Both models run on the same random images before anything is
written; a relative difference of the logits above 1e-4 stops the program (exit code 2).
"""

import sys

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)

from checkpoint import CheckpointError, save_atomically
from config import build_arg_parser, get_config, update_config
from inference import check_close, deploy_model, load_model, random_images, run_model
from utils import run_cli

CHECK_BATCH = 2  # random images each form is compared on


def reparam(config, src, dst):
    """Write the deploy form of the training-time weights `src` to `dst`; returns the relative difference."""
    model, deploy = load_model(config, src)
    if deploy:
        raise CheckpointError(f'{src} already holds deploy-form weights; load it with -opts MODEL.DEPLOY True')
    images = random_images(config, CHECK_BATCH)
    expected = run_model(model, images)
    deployed = deploy_model(config, model)
    difference = check_close(run_model(deployed, images), expected, 'the deploy form')
    save_atomically(model.state_dict(), dst)  # the injected weights, which load into the deploy form
    return difference


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = build_arg_parser('Write the deploy form (locality injected) of training-time RepMLPNet weights.')
    parser.add_argument('-src', required=True, help='training-time .pdparams (or a training checkpoint)')
    parser.add_argument('-dst', required=True, help='the deploy-form .pdparams to write')
    args = parser.parse_args(argv)
    config = update_config(get_config(), args)
    difference = reparam(config, args.src, args.dst)
    print(f'{args.src}: {config.MODEL.NAME}, locality injected; largest relative difference of the logits '
          f'{difference:.1e}; wrote {args.dst} (load it with -opts MODEL.DEPLOY True)')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
