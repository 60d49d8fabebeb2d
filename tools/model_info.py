"""Trainable parameters and multiply-accumulates (MACs) of RepMLPNet variants, training-time and deploy form.

    python tools/model_info.py                      # every config in configs/
    python tools/model_info.py -cfg configs/repmlp_b_224.yaml -image_size 448

MACs are counted for one image at DATA.IMAGE_SIZE by forward hooks: convolutions, linear layers, the channel
perceptron fc3 and the local perceptron's depthwise convs (the "FLOPs" of the official README are MACs).
Normalisations, activations, pooling and additions are not counted, as is usual.
"""

import glob
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402,F401  (before paddle)
import paddle  # noqa: E402
from paddle import nn  # noqa: E402

from config import build_arg_parser, get_config, update_config  # noqa: E402
from repmlp import RepMLPBlock, build_repmlp  # noqa: E402
from utils import run_cli  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _conv_macs(layer, inputs, output):
    weight = layer.weight.shape  # [out, in / groups, kh, kw]
    return int(np.prod(output.shape)) * weight[1] * weight[2] * weight[3]


def _linear_macs(layer, inputs, output):
    return int(np.prod(output.shape)) * layer.weight.shape[0]


def _repmlp_block_macs(layer, inputs, output):
    # fc3: each output element sums h*w products; each local k x k depthwise branch, k*k products
    # (counted as the convs they are, whatever form the implementation computes them in)
    return int(np.prod(inputs[0].shape)) * (layer.h * layer.w + sum(k * k for k in layer.reparam_conv_k))


MAC_COUNTERS = {nn.Conv2D: _conv_macs, nn.Linear: _linear_macs, RepMLPBlock: _repmlp_block_macs}


def count_macs(model, image_size):
    """MACs of one forward pass of `model` on a single [1, 3, image_size, image_size] image."""
    total = [0]
    hooks = []
    for layer in model.sublayers():
        counter = MAC_COUNTERS.get(type(layer))
        if counter is not None:
            hooks.append(layer.register_forward_post_hook(
                lambda layer, inputs, output, counter=counter: total.__setitem__(
                    0, total[0] + counter(layer, inputs, output))))
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 3, image_size, image_size]))
    for hook in hooks:
        hook.remove()
    return total[0]


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


def main():
    parser = build_arg_parser('Parameters and MACs of RepMLPNet variants (all configs/ when -cfg is not given).')
    args = parser.parse_args()
    if args.cfg:
        configs = [update_config(get_config(), args)]
    else:
        configs = [get_config(path) for path in sorted(glob.glob(os.path.join(ROOT, 'configs', 'repmlp_*.yaml')))]
    print('| model | input | params (train) | params (deploy) | MACs (train) | MACs (deploy) |')
    print('|---|---|---|---|---|---|')
    for config in configs:
        name, size, p_train, p_deploy, m_train, m_deploy = describe(config)
        print(f'| {name} | {size} | {p_train / 1e6:.1f}M | {p_deploy / 1e6:.1f}M | {m_train / 1e9:.2f}G '
              f'| {m_deploy / 1e9:.2f}G |')


if __name__ == '__main__':
    run_cli(main)
