"""repmlp.py: the network, its fc3 as a batched matmul, and exact locality injection."""

import glob
import os
import subprocess
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from config import get_config
from helpers import randomize_batchnorms, relative_error, spy_on_kernels, tiny_config
from repmlp import FoldedFFN, RepMLP, RepMLPBlock, RepMLPNet, RepMLPNetUnit, build_repmlp

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
    randomize_batchnorms(block, paddle.randn(shape))
    block.train() if training else block.eval()
    x = paddle.randn(shape)
    parts = x.reshape([4, channels, 2, h, 3, w]).transpose([0, 2, 4, 1, 3, 5])  # [N, hp, wp, C, h, w]
    fc3 = F.conv2d(parts.reshape([-1, sets * h * w, 1, 1]), block.fc3.weight, groups=sets)
    convs = [getattr(block, f'repconv{k}') for k in (1, 3)]
    local = paddle.add_n([branch(parts.reshape([-1, sets, h, w])) for branch in convs])
    out = block.fc3_bn(fc3.reshape([-1, sets, h, w])) + local
    # the official merge: rows taken as (N*C/S, hp, wp), whatever order they were gathered in
    out = out.reshape([-1, 2, 3, sets, h, w]).transpose([0, 3, 1, 4, 2, 5])
    expected = out.reshape(shape) * block.gp(x)
    output = block(x)
    assert relative_error(output.numpy(), expected.numpy()) <= 1e-5
    # the gradients of every parameter agree too (the local convs' matrices are built by a product)
    weights = paddle.randn(expected.shape)
    params = [p for p in block.parameters() if not p.stop_gradient]
    grads = paddle.grad([(output * weights).sum()], params)
    expected_grads = paddle.grad([(expected * weights).sum()], params)
    largest = max(float(g.abs().max()) for g in expected_grads)
    names = [name for name, p in block.named_parameters() if not p.stop_gradient]
    for name, grad, expected_grad in zip(names, grads, expected_grads):
        if training and name == 'repconv1.conv.weight':
            # a per-set scale that the training-mode BN after it cancels but for its epsilon: its gradient is what
            # is left of sums whose terms have the size of the other gradients, so its error is measured by them
            scale = largest
        else:
            scale = float(expected_grad.abs().max())  # 0 for a gate whose ReLU is off everywhere: then exactly 0
        assert float((grad - expected_grad).abs().max()) <= 1e-4 * scale, name


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


def test_the_unit_fuses_its_residual_adds_exactly(monkeypatch):
    """The unit adds each block's output to its residual in one kernel pass (inference): the same as composing the
    blocks' own forwards, in the training-time form and once folded (the FFN then a FoldedFFN, no BN left)."""
    calls = spy_on_kernels(monkeypatch)
    unit = RepMLPNetUnit(8, 4, 4, (1, 3), 2)
    x = paddle.randn([2, 8, 8, 8])
    randomize_batchnorms(unit, x)
    with paddle.no_grad():
        middle = x + unit.repmlp_block(unit.prebn1(x))
        expected = (middle + unit.ffn_block(unit.prebn2(middle))).numpy()
        calls.clear()
        output = unit(x).numpy()
        assert calls['gated_add_cpu'] == 1 and calls['batch_norm_add_cpu'] == 1
        assert relative_error(output, expected) <= 1e-6
        unit.fold_batchnorms()
        assert isinstance(unit.ffn_block, FoldedFFN)
        assert not any(isinstance(layer, paddle.nn.BatchNorm2D) for layer in unit.sublayers())
        assert relative_error(unit(x).numpy(), expected) <= 1e-5


BOTH_WAYS = '''
import sys
import numpy as np
sys.path[:0] = [{root!r}, {tests!r}]
import runtime
import paddle
import cpu_ops
from helpers import tiny_config
from repmlp import build_repmlp
import pathlib
assert (cpu_ops.kernels() is not None) == (sys.argv[1] == '1')
paddle.seed(0)
model = build_repmlp(tiny_config(pathlib.Path(sys.argv[2])))
images = paddle.to_tensor(np.random.default_rng(0).standard_normal([4, 3, 32, 32]).astype('float32'))
loss = model(images).square().mean()
loss.backward()
grads = {{'grad/' + name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}}
model.eval()
with paddle.no_grad():
    logits = model(images).numpy()
np.savez(sys.argv[3], logits=logits, loss=float(loss), **grads)
'''


def test_the_model_computes_the_same_with_the_kernels_switched_off(tmp_path):
    """REPMLP_CPU_KERNELS=0 against the kernels, each in its own process: a training step's loss and gradients
    and the eval logits agree to float32 rounding."""
    script = BOTH_WAYS.format(root=ROOT, tests=os.path.join(ROOT, 'tests'))
    results = []
    for switch in ('1', '0'):
        out = tmp_path / f'kernels{switch}.npz'
        subprocess.run([sys.executable, '-c', script, switch, str(tmp_path), str(out)], check=True, timeout=300,
                       env={**os.environ, 'REPMLP_CPU_KERNELS': switch})
        results.append(np.load(out))
    on, off = results
    assert relative_error(on['logits'], off['logits']) <= 1e-5
    assert abs(float(on['loss']) - float(off['loss'])) <= 1e-6 * abs(float(off['loss']))
    grads = sorted(name for name in off.files if name.startswith('grad/'))
    assert grads and grads == sorted(name for name in on.files if name.startswith('grad/'))
    largest = max(np.abs(off[name]).max() for name in grads)
    for name in grads:
        own = np.abs(off[name]).max()
        if own <= 1e-5 * largest:
            # an exact gradient of 0 (prebn2's and ffn_fc2.bn's biases: a training-mode BN follows every path from
            # them), so both sides are rounding noise
            assert np.abs(on[name]).max() <= 1e-5 * largest, name
            continue
        # the 1x1 branches' scales: what a training-mode BN leaves of cancelling sums (see the block test); 1e-3 of
        # each gradient's own size, as the kernels' float32 rounding (1e-7 relative) compounds through 16 units
        scale = largest if name.endswith('repconv1.conv.weight') else own
        assert np.abs(on[name] - off[name]).max() <= 1e-3 * scale, name
