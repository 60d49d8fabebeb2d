"""repmlp.py: the network, its fc3 as a batched matmul, and exact locality injection."""

import glob
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from config import get_config
from helpers import randomize_batchnorms, relative_error, tiny_config
from repmlp import PartitionFC, RepMLP, RepMLPNet, build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, 'configs', 'repmlp_*.yaml')))


def forward(model, images):
    with paddle.no_grad():
        return model(images).numpy()


@pytest.mark.parametrize('cfg_file', CONFIGS, ids=os.path.basename)
def test_locality_injection_is_exact_for_every_variant(cfg_file):
    config = get_config(cfg_file)
    paddle.seed(0)
    images = paddle.randn([2, 3, config.DATA.IMAGE_SIZE, config.DATA.IMAGE_SIZE])
    model = randomize_batchnorms(build_repmlp(config), images)
    before = forward(model, images)
    model.locality_injection()
    assert relative_error(forward(model, images), before) <= 1e-5
    names = model.state_dict().keys()
    assert not any('repconv' in name or 'fc3_bn' in name for name in names)
    assert any(name.endswith('fc3.bias') for name in names)


def test_deploy_build_matches_injected_form(tmp_path):
    config = tiny_config(tmp_path)
    injected = build_repmlp(config).locality_injection()
    config.defrost()
    config.MODEL.DEPLOY = True
    deploy = build_repmlp(config)
    shapes = lambda model: {k: list(v.shape) for k, v in model.state_dict().items()}  # noqa: E731
    assert shapes(deploy) == shapes(injected)
    assert RepMLP is RepMLPNet


@pytest.mark.parametrize('image_size', [32, 64])
def test_tiny_injection_exact_with_several_partitions(tmp_path, image_size):
    images = paddle.randn([3, 3, image_size, image_size])
    model = randomize_batchnorms(build_repmlp(tiny_config(tmp_path)), images, seed=1)
    before = forward(model, images)
    assert relative_error(forward(model.locality_injection(), images), before) <= 1e-5


@pytest.mark.parametrize('sets, area', [(1, 16), (4, 9)])
def test_partition_fc_equals_grouped_conv(sets, area):
    layer = PartitionFC(sets, area, bias=True)
    rows = paddle.randn([sets, 5, area])
    # the official computation: each row of S*h*w values is a 1x1 map of S*h*w channels, conv with groups=S
    as_channels = rows.transpose([1, 0, 2]).reshape([5, sets * area, 1, 1])
    expected = F.conv2d(as_channels, layer.weight, layer.bias, groups=sets).reshape([5, sets, area])
    assert relative_error(layer(rows).numpy(), expected.transpose([1, 0, 2]).numpy()) <= 1e-6


def test_training_step_reaches_every_parameter(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    model.train()
    loss = model(paddle.randn([4, 3, 32, 32])).square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters()
               if not p.stop_gradient and (p.grad is None or not np.any(p.grad.numpy()))]
    assert not missing
