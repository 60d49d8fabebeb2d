"""cpu_ops.py: the C++ GELU kernel builds here and gives Paddle's GELU values and gradients."""

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import cpu_ops
from helpers import relative_error


def test_the_kernel_builds_on_cpus_with_avx2():
    """On the machines this project is tested on, a fallback would hide a broken build: require the kernel."""
    if not cpu_ops.cpu_has_avx2():
        pytest.skip('the kernel is built for x86-64 CPUs with AVX2 only')
    assert cpu_ops.gelu_kernel() is not None


@pytest.mark.parametrize('layout', ['contiguous', 'transposed view'])
def test_gelu_matches_paddle_values_and_gradients(layout):
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal((4, 6, 7, 5)).astype(np.float32) * 4)
    if layout == 'transposed view':
        x = x.transpose([0, 2, 1, 3])
    x.stop_gradient = False
    weights = paddle.randn(x.shape)
    output, expected = cpu_ops.gelu(x), F.gelu(x)
    assert relative_error(output.numpy(), expected.numpy()) <= 1e-6
    grad = paddle.grad([(output * weights).sum()], [x])[0]
    expected_grad = paddle.grad([(expected * weights).sum()], [x])[0]
    assert relative_error(grad.numpy(), expected_grad.numpy()) <= 1e-6


def test_gelu_keeps_nan_and_infinity_as_paddle_does():
    """A diverging run must still see its NaN: the kernel is built without -ffast-math."""
    x = paddle.to_tensor([float('nan'), float('inf'), -float('inf'), 0.0, -30.0, 30.0])
    np.testing.assert_array_equal(cpu_ops.gelu(x).numpy(), F.gelu(x).numpy())


def test_other_dtypes_use_paddles_gelu():
    x = paddle.randn([3, 5]).astype('float64')
    np.testing.assert_array_equal(cpu_ops.gelu(x).numpy(), F.gelu(x).numpy())


def test_a_failed_build_warns_and_falls_back(monkeypatch):
    def no_compiler(**kwargs):
        raise RuntimeError('g++: command not found')
    monkeypatch.setattr(cpu_ops.cpp_extension, 'load', no_compiler)
    monkeypatch.setattr(cpu_ops, 'cpu_has_avx2', lambda: True)
    monkeypatch.setattr(cpu_ops, '_kernels', {})
    x = paddle.randn([3, 5])
    with pytest.warns(UserWarning, match=r'did not build \(g\+\+: command not found\)'):
        output = cpu_ops.gelu(x)
    np.testing.assert_array_equal(output.numpy(), F.gelu(x).numpy())


def test_an_unwritable_build_folder_warns_and_falls_back(monkeypatch, tmp_path):
    blocked = tmp_path / 'file'
    blocked.write_text('')  # a file where the build folder's parent should be
    monkeypatch.setenv('PADDLE_EXTENSION_DIR', str(blocked))
    monkeypatch.setattr(cpu_ops, 'cpu_has_avx2', lambda: True)
    monkeypatch.setattr(cpu_ops, '_kernels', {})
    x = paddle.randn([3, 5])
    with pytest.warns(UserWarning, match='did not build'):
        output = cpu_ops.gelu(x)
    np.testing.assert_array_equal(output.numpy(), F.gelu(x).numpy())
