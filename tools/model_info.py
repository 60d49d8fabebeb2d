"""Trainable parameters and multiply-accumulates (MACs) of RepMLPNet variants, training-time and deploy form.

    python tools/model_info.py                      # every config in configs/
    python tools/model_info.py -cfg configs/repmlp_b_224.yaml -image_size 448

MACs are counted for one image at DATA.IMAGE_SIZE by `inference.count_macs`: convolutions, linear layers, the
channel perceptron fc3 and the local perceptron's depthwise convs (the "FLOPs" of the official README are MACs).
Normalisations, activations, pooling and additions are not counted, as is usual.
"""

import glob
import os
import sys

import numpy as np

from repo_path import ROOT  # importing it puts the repository root on sys.path
import runtime  # noqa: F401  (before paddle)

from config import build_arg_parser, get_config, update_config
from inference import count_macs
from repmlp import build_repmlp
from utils import run_cli


def count_parameters(model):
    """Number of trainable parameters (BN running statistics are buffers and not counted)."""
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)


def describe(config):
    """(name, image size, params train, params deploy, MACs train, MACs deploy) for one config."""
    size = config.DATA.IMAGE_SIZE
    model = build_repmlp(config)
    params_train, macs_train = count_parameters(model), count_macs(model, size)
    model.locality_injection()
    return config.MODEL.NAME, size, params_train, count_parameters(model), macs_train, count_macs(model, size)


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = build_arg_parser('Parameters and MACs of RepMLPNet variants (all configs/ when -cfg is not given).')
    args = parser.parse_args(argv)
    if args.cfg:
        configs = [update_config(get_config(), args)]
    else:
        pattern = os.path.join(ROOT, 'configs', 'repmlp_*.yaml')
        configs = [get_config(path) for path in sorted(glob.glob(pattern))]
    print('| model | input | params (train) | params (deploy) | MACs (train) | MACs (deploy) |')
    print('|---|---|---|---|---|---|')
    for config in configs:
        name, size, p_train, p_deploy, m_train, m_deploy = describe(config)
        print(f'| {name} | {size} | {p_train / 1e6:.1f}M | {p_deploy / 1e6:.1f}M | {m_train / 1e9:.2f}G '
              f'| {m_deploy / 1e9:.2f}G |')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
