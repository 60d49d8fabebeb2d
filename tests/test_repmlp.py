"""repmlp.py: the network, its fc3 as a batched matmul, and exact locality injection."""

import glob
import os

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from config import get_config
from helpers import randomize_batchnorms, relative_error, tiny_config
from repmlp import RepMLP, RepMLPBlock, RepMLPNet, build_repmlp

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


@pytest.mark.parametrize('h, w', [(3, 2), (21, 20)], ids=['small-partitions', 'large-partitions'])
@pytest.mark.parametrize('sets, channels', [(1, 4), (2, 4), (4, 8)])
@pytest.mark.parametrize('training', [True, False])
def test_block_equals_official_grouped_conv_computation(sets, channels, training, h, w):
    """The block against the official layout, written out here: 2x3 partitions as 1x1 maps of S*h*w channels
    through a conv with groups=S, conv branches on [M, S, h, w]. Small partitions run the local convs as
    products, large ones as depthwise convs; eval mode runs the fused FC."""
    block = RepMLPBlock(channels, h, w, (1, 3), sets, official_order=True)
    shape = [4, channels, 2 * h, 3 * w]
    randomize_batchnorms(block, paddle.randn(shape), paddle.zeros(shape))
    block.train() if training else block.eval()
    x = paddle.randn(shape)
    parts = x.reshape([4, channels, 2, h, 3, w]).transpose([0, 2, 4, 1, 3, 5])  # [N, hp, wp, C, h, w]
    fc3 = F.conv2d(parts.reshape([-1, sets * h * w, 1, 1]), block.fc3.weight, groups=sets)
    convs = [getattr(block, f'repconv{k}') for k in (1, 3)]
    local = paddle.add_n([branch(parts.reshape([-1, sets, h, w])) for branch in convs])
    out = block.fc3_bn(fc3.reshape([-1, sets, h, w])) + local
    # the official merge: rows taken as (N*C/S, hp, wp), whatever order they were gathered in
    out = out.reshape([-1, 2, 3, sets, h, w]).transpose([0, 3, 1, 4, 2, 5])
    residual = paddle.randn(shape)
    expected = residual + out.reshape(shape) * block.gp(x)
    output = block(x, residual)
    assert relative_error(output.numpy(), expected.numpy()) <= 1e-5
    # the gradients of every parameter agree too (the local convs' matrices are built by a scatter)
    weights = paddle.randn(expected.shape)
    params = [p for p in block.parameters() if not p.stop_gradient]
    grads = paddle.grad([(output * weights).sum()], params)
    expected_grads = paddle.grad([(expected * weights).sum()], params)
    # relative to the largest gradient: a conv branch's weight gradient is ~0 (train-mode BN after it cancels its
    # scale), so its own relative error is noise
    largest = max(float(g.abs().max()) for g in expected_grads)
    for param, grad, expected_grad in zip(params, grads, expected_grads):
        assert float((grad - expected_grad).abs().max()) <= 1e-4 * largest, param.name


def test_training_step_reaches_every_parameter(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    model.train()
    loss = model(paddle.randn([4, 3, 32, 32])).square().mean()
    loss.backward()
    missing = [name for name, p in model.named_parameters()
               if not p.stop_gradient and (p.grad is None or not np.any(p.grad.numpy()))]
    assert not missing


@pytest.mark.parametrize('image_size', [32, 64])
def test_forward_features_shapes_and_strides(tmp_path, image_size):
    model = build_repmlp(tiny_config(tmp_path))
    model.eval()
    images = paddle.randn([2, 3, image_size, image_size])
    features = model.forward_features(images)
    expected = [[2, c, image_size // s, image_size // s] for c, s in zip([8, 16, 32, 64], [4, 8, 16, 32])]
    assert [list(f.shape) for f in features] == expected
    assert [list(f.shape) for f in model.forward_features(images, out_indices=(1, 3))] == expected[1::2]
    before = [f.numpy() for f in features]
    model.locality_injection()
    for after, reference in zip(model.forward_features(images), before):
        assert relative_error(after.numpy(), reference) <= 1e-5


def test_input_that_does_not_split_is_a_clear_error(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    with pytest.raises(ValueError, match='does not split into 8x4 partitions'):
        model(paddle.randn([1, 3, 48, 48]))


def square_partition_config(tmp_path, official_order):
    """The tiny model with square partitions: one partition per map at 32x32, four at 64x64."""
    config = tiny_config(tmp_path)
    config.defrost()
    config.MODEL.WIDTHS = list(config.MODEL.HEIGHTS)
    config.MODEL.OFFICIAL_PARTITION_ORDER = official_order
    return config


@pytest.mark.parametrize('official_order', [False, True])
def test_partitions_are_independent_unless_official_order(tmp_path, official_order):
    """Every layer is non-overlapping, so a 2x2 tiling of an image must give the same logits as the image itself
    when each partition is processed on its own. The official merge order breaks that once a map has several
    partitions (and C > S)."""
    model = build_repmlp(square_partition_config(tmp_path, official_order))
    randomize_batchnorms(model, paddle.randn([4, 3, 32, 32]))
    images = paddle.randn([2, 3, 32, 32])
    error = relative_error(forward(model, paddle.tile(images, [1, 1, 2, 2])), forward(model, images))
    assert (error > 1e-2) if official_order else (error <= 1e-5)


def test_orders_agree_when_every_map_is_one_partition(tmp_path):
    official = build_repmlp(square_partition_config(tmp_path, True))
    randomize_batchnorms(official, paddle.randn([4, 3, 32, 32]))
    spatial = build_repmlp(square_partition_config(tmp_path, False))
    spatial.set_state_dict(official.state_dict())
    spatial.eval()
    images = paddle.randn([2, 3, 32, 32])
    assert relative_error(forward(spatial, images), forward(official, images)) <= 1e-6
