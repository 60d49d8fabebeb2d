"""The re-parameterization protocol (locality injection, BN folding) and tools/reparam.py."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from checkpoint import is_deploy_form, load_weights
from helpers import relative_error, tiny_config, trained_like_model
from repmlp import ChannelAffine, build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def logits(model, images):
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def reparam(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'reparam.py'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


# extra lines continue the MODEL section: three local conv branches and the official partition order
@pytest.mark.parametrize('extra', ['', '  REPARAM_CONV_K: [1, 3, 5]\n  OFFICIAL_PARTITION_ORDER: True\n'])
def test_folded_model_has_no_batchnorm_and_the_same_outputs(tmp_path, extra):
    config = tiny_config(tmp_path, extra)
    model = trained_like_model(config)
    images = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    expected = logits(model, images)
    model.fold_batchnorms()
    kinds = {type(layer).__name__ for layer in model.sublayers()}
    assert not any('BatchNorm' in kind for kind in kinds), kinds
    assert not any('.bn.' in name or 'fc3_bn' in name or 'repconv' in name for name in model.state_dict())
    # only the BN before each block stays, as a per-channel affine: every other one was absorbed
    assert sum(isinstance(layer, ChannelAffine) for layer in model.sublayers()) == sum(config.MODEL.NUM_BLOCKS)
    assert relative_error(logits(model, images), expected) <= 1e-5


def test_reparam_writes_deploy_weights_with_the_same_outputs(tmp_path):
    config = tiny_config(tmp_path)
    model = trained_like_model(config)
    src, dst = str(tmp_path / 'train.pdparams'), str(tmp_path / 'deploy.pdparams')
    paddle.save(model.state_dict(), src)
    code, out, err = reparam('-cfg', str(tmp_path / 'tiny.yaml'), '-src', src, '-dst', dst)
    assert code == 0, err
    assert 'largest relative difference' in out and dst in out
    state = paddle.load(dst)
    assert is_deploy_form(state) is True and is_deploy_form(model.state_dict()) is False
    config.defrost()
    config.MODEL.DEPLOY = True
    deploy = load_weights(build_repmlp(config), dst)
    deploy.eval()
    images = np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert relative_error(logits(deploy, images), logits(model, images)) <= 1e-5

    # a deploy file as the source, and weights with another classifier: one line each, exit code 2
    code, out, err = reparam('-cfg', str(tmp_path / 'tiny.yaml'), '-src', dst, '-dst', str(tmp_path / 'x.pdparams'))
    assert code == 2 and 'already holds deploy-form weights' in err and len(err.strip().splitlines()) == 1
    code, out, err = reparam('-cfg', str(tmp_path / 'tiny.yaml'), '-opts', 'MODEL.NUM_CLASSES', '7',
                             '-src', src, '-dst', str(tmp_path / 'x.pdparams'))
    assert code == 2 and 'only the classifier differs' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'x.pdparams').exists()


def test_fold_leaves_no_batchnorm_and_the_eval_outputs_even_from_train_mode(tmp_path):
    config = tiny_config(tmp_path)
    model = trained_like_model(config)
    images = paddle.randn([3, 3, 32, 32])
    with paddle.no_grad():
        expected = model(images).numpy()
    model.train()
    assert model.fold_batchnorms() is model and not model.training
    assert not [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    with paddle.no_grad():
        assert relative_error(model(images).numpy(), expected) <= 1e-5
