"""Small models and random BN statistics shared by the tests."""

import collections
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from config import get_config
from engine import flatten
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MODEL = """DATA:
  IMAGE_SIZE: 32
MODEL:
  NAME: tiny
  NUM_CLASSES: 10
  CHANNELS: [8, 16, 32, 64]
  HEIGHTS: [8, 4, 2, 1]
  WIDTHS: [4, 2, 1, 1]
  NUM_BLOCKS: [1, 1, 2, 1]
  SHARESETS_NUMS: [1, 2, 4, 8]
"""


def tiny_config(tmp_path, extra=''):
    """Config of a RepMLPNet small enough for CPU tests: 32x32 inputs, non-square partitions, C > S."""
    path = tmp_path / 'tiny.yaml'
    path.write_text(TINY_MODEL + extra)
    return get_config(str(path))


def randomize_batchnorms(model, *inputs, seed=0):
    """Give every BN running statistics near those of `model(*inputs)` (perturbed at random) and random affine terms.

    Statistics that match the activations, and BN gains in [0.1, 0.5] as in trained residual networks, keep
    the outputs in a sane range. With gains near 1 the residual stream of the 20-unit variants grows a
    thousandfold and float32 rounding alone moves the logits by ~2e-5 relative in either form; the test
    would then measure that growth, not the injection. The perturbation keeps every fused term non-trivial.
    """
    rng = np.random.default_rng(seed)
    batchnorms = [layer for layer in model.sublayers() if isinstance(layer, paddle.nn.BatchNorm2D)]
    for layer in batchnorms:
        layer._momentum = 0.0  # running statistics := this batch's statistics
    model.train()
    with paddle.no_grad():
        model(*inputs)
    model.eval()
    for layer in batchnorms:
        layer._momentum = 0.9
        size = layer._mean.shape[0]
        std = np.sqrt(layer._variance.numpy())
        for tensor, values in [(layer._mean, layer._mean.numpy() + rng.normal(0, 0.1, size) * std),
                               (layer._variance, layer._variance.numpy() * rng.uniform(0.5, 1.5, size)),
                               (layer.weight, rng.uniform(0.1, 0.5, size)),
                               (layer.bias, rng.normal(0, 0.1, size))]:
            tensor.set_value(paddle.to_tensor(values.astype('float32')))
    return model


def trained_like_model(config, seed=0):
    """A training-time model of `config` (paddle seeded with `seed`) with non-trivial BN statistics, in eval mode."""
    paddle.seed(seed)
    size = config.DATA.IMAGE_SIZE
    return randomize_batchnorms(build_repmlp(config), paddle.randn([4, 3, size, size]), seed=seed)


def fake_checkpoint(epoch):
    """The keyword arguments of checkpoint.save_checkpoint for epoch `epoch`: a 4-weight model that holds the epoch."""
    return dict(model={'w': paddle.full([4], float(epoch))}, optimizer={}, lr_scheduler={}, scaler={}, ema=None,
                epoch=epoch, best_acc1={'val': 0.5}, config='')


def relative_error(output, reference):
    """Largest absolute difference, relative to the largest magnitude of the reference."""
    output, reference = np.asarray(output), np.asarray(reference)
    return float(np.abs(output - reference).max() / np.abs(reference).max())


def start_process(args, threads='1', cwd=ROOT):
    """Start `python ARGS` in `cwd` (the repository root), in its own process group (so that a timeout can kill
    all of it)."""
    return subprocess.Popen([sys.executable] + args, cwd=cwd, env={**os.environ, 'OMP_NUM_THREADS': threads},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def finish_process(process, timeout=180):
    """(exit code, stdout, stderr) of a started process; the test fails if it does not end in `timeout` s."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f'{process.args} did not finish in {timeout}s:\n{(out + err)[-3000:]}')
    return process.returncode, out, err


def kill_group(process):
    """SIGKILL the process and everything it started (the launcher and its ranks), like a lost machine."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()


def wait_for(path, text, process, timeout=120):
    """Return once `text` is in the file at `path`; the test fails if `process` ends first or it takes `timeout` s."""
    deadline = time.time() + timeout
    while not (os.path.isfile(path) and text in open(path, encoding='utf-8').read()):
        if process.poll() is not None or time.time() > deadline:
            out, err = process.communicate()
            pytest.fail(f'{text!r} never appeared in {path}:\n{(out + err)[-3000:]}')
        time.sleep(0.05)


def assert_same_checkpoint(path_a, path_b):
    """Two training checkpoints hold the same weights, optimizer, EMA, schedule and best accuracies, bit for bit."""
    a, b = flatten(paddle.load(path_a), '/'), flatten(paddle.load(path_b), '/')
    assert a.keys() == b.keys()
    for key in set(a) - {'config'}:  # the configs differ in SAVE and RESUME only
        if isinstance(a[key], paddle.Tensor):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy(), err_msg=key)
        else:
            assert a[key] == b[key], key


def spy_on_kernels(monkeypatch):
    """A Counter of the C++ kernel ops called from now on (by name, e.g. 'gelu_cpu'), the test's proof that the kernel
    path ran rather than Paddle's fallback; the test is skipped where the kernels are off or not available."""
    import cpu_ops
    module = cpu_ops.kernels()
    if module is None:
        pytest.skip('the C++ CPU kernels are off or not built on this machine')
    calls = collections.Counter()

    class CountingModule:
        def __getattr__(self, name):
            op = getattr(module, name)

            def counted(*args):
                calls[name] += 1
                return op(*args)
            return counted

    monkeypatch.setitem(cpu_ops._kernels, 'cpu_ops', CountingModule())
    return calls
