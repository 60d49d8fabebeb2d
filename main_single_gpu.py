"""Train or evaluate RepMLPNet in one process: on the GPU when Paddle has one, else on the CPU.

    python main_single_gpu.py -cfg configs/repmlp_b_224.yaml configs/recipes/official.yaml \
        -dataset imagenet2012 -data_path /data/imagenet -output output/b224
    python main_single_gpu.py -cfg configs/repmlp_b_224.yaml -eval -pretrained repmlp_b_224.pdparams \
        -data_path /data/imagenet -output output/b224_eval
"""

import sys

import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)

import engine
from config import build_arg_parser, get_config, update_config
from utils import run_cli


def main(argv=None):
    """Parse the flags, resolve the config, run; returns the exit code."""
    args = build_arg_parser('Train or evaluate RepMLPNet in one process.').parse_args(argv)
    engine.run(update_config(get_config(), args))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
