"""cpu_ops.py: the C++ kernels build here and give the values (and for the GELU the gradients) of Paddle's ops."""

import glob
import os
import re
import shutil
import subprocess

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from paddle.utils import cpp_extension

import cpu_ops
from helpers import relative_error, spy_on_kernels


def test_the_kernel_builds_on_cpus_with_avx2():
    """On the machines this project is tested on, a fallback would hide a broken build: require the kernel."""
    if not cpu_ops.cpu_has_avx2():
        pytest.skip('the kernel is built for x86-64 CPUs with AVX2 only')
    assert cpu_ops.kernels() is not None


def test_the_kernels_run_on_paddles_openmp_runtime():
    """Linked to Paddle's libiomp5 and not to GCC's libgomp, whose threads would compete with MKL's (see the
    source and README's Speed section)."""
    if cpu_ops.kernels() is None or not os.path.isfile(cpu_ops.INTEL_OPENMP) or shutil.which('readelf') is None:
        pytest.skip('no kernels, no libiomp5 in this Paddle, or no readelf')
    folder = os.path.join(cpp_extension.get_build_directory(), 'repmlp_cpu_ops')
    library, = glob.glob(os.path.join(folder, '**', 'repmlp_cpu_ops.so'), recursive=True)
    dynamic = subprocess.run(['readelf', '-d', library], capture_output=True, text=True, check=True).stdout
    needed = re.findall(r'\(NEEDED\).*\[(.+)\]', dynamic)
    assert 'libiomp5.so' in needed and not any('gomp' in name for name in needed), needed


@pytest.mark.parametrize('layout, shape', [('contiguous', (4, 6, 7, 5)), ('transposed view', (4, 6, 7, 5)),
                                           ('contiguous', (4, 16, 41, 40))], ids=['small', 'view', 'threaded'])
def test_gelu_matches_paddle_values_and_gradients(layout, shape, monkeypatch):
    calls = spy_on_kernels(monkeypatch)
    x = paddle.to_tensor(np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 4)
    if layout == 'transposed view':
        x = x.transpose([0, 2, 1, 3])
    x.stop_gradient = False
    weights = paddle.randn(x.shape)
    output, expected = cpu_ops.gelu(x), F.gelu(x)
    assert relative_error(output.numpy(), expected.numpy()) <= 1e-6
    grad = paddle.grad([(output * weights).sum()], [x])[0]
    expected_grad = paddle.grad([(expected * weights).sum()], [x])[0]
    assert relative_error(grad.numpy(), expected_grad.numpy()) <= 1e-6
    assert calls == {'gelu_cpu': 1}


def test_gelu_keeps_nan_and_infinity_as_paddle_does(monkeypatch):
    """A diverging run must still see its NaN: the kernel is built without -ffast-math."""
    calls = spy_on_kernels(monkeypatch)
    x = paddle.to_tensor([float('nan'), float('inf'), -float('inf'), 0.0, -30.0, 30.0])
    np.testing.assert_array_equal(cpu_ops.gelu(x).numpy(), F.gelu(x).numpy())
    assert calls == {'gelu_cpu': 1}


def test_other_dtypes_use_paddles_gelu():
    x = paddle.randn([3, 5]).astype('float64')
    np.testing.assert_array_equal(cpu_ops.gelu(x).numpy(), F.gelu(x).numpy())


def running_batchnorm(channels, seed=0):
    """An eval-mode BN with running statistics and affine terms far from the identity."""
    rng = np.random.default_rng(seed)
    bn = paddle.nn.BatchNorm2D(channels)
    for tensor, values in [(bn._mean, rng.normal(0, 2, channels)), (bn._variance, rng.uniform(0.1, 4, channels)),
                           (bn.weight, rng.uniform(-2, 2, channels)), (bn.bias, rng.normal(0, 1, channels))]:
        tensor.set_value(values.astype(np.float32))
    bn.eval()
    return bn


def gated_add_with_bias(residual, x, gate, bias):
    """residual + (x + bias) * gate, with bias [S, H*W] tiled over the channels: channel c takes the row c % S."""
    sets, (channels, height, width) = bias.shape[0], x.shape[1:]
    bias_maps = np.tile(bias.numpy().reshape([sets, height, width]), [channels // sets, 1, 1])  # [C, H, W]
    return residual + (x + paddle.to_tensor(bias_maps)) * gate


# 7x5 maps: rows whose length is not a multiple of the kernels' 8 lanes; 4x4: rows that are; 45x45: enough values
# for the kernels' threads
@pytest.mark.parametrize('shape', [[3, 6, 7, 5], [2, 6, 4, 4], [2, 16, 45, 45]], ids=['7x5', '4x4', '45x45'])
def test_inference_kernels_match_paddle(shape):
    rng = np.random.default_rng(1)
    x, residual = (paddle.to_tensor(rng.standard_normal(shape).astype(np.float32) * 3) for _ in range(2))
    gate = paddle.to_tensor(rng.uniform(0, 1, shape[:2] + [1, 1]).astype(np.float32))
    bn = running_batchnorm(shape[1])
    module = cpu_ops.kernels()
    if module is None:
        pytest.skip('no kernels on this CPU')
    with paddle.no_grad():
        pairs = [(module.batch_norm_gelu_cpu(x, bn._mean, bn._variance, bn.weight, bn.bias, bn._epsilon),
                  F.gelu(bn(x))),
                 (module.batch_norm_add_cpu(residual, x, bn._mean, bn._variance, bn.weight, bn.bias, bn._epsilon),
                  residual + bn(x)),
                 (module.gated_add_cpu(residual, x, gate, None), residual + x * gate)]
        bias = paddle.to_tensor(rng.standard_normal((2, shape[2] * shape[3])).astype(np.float32))
        pairs.append((module.gated_add_cpu(residual, x, gate, bias), gated_add_with_bias(residual, x, gate, bias)))
    for output, expected in pairs:
        assert relative_error(output.numpy(), expected.numpy()) <= 1e-6


def test_inference_kernels_keep_nan_and_infinity(monkeypatch):
    calls = spy_on_kernels(monkeypatch)
    x = paddle.to_tensor([float('nan'), float('inf'), -float('inf'), 0.0, -30.0, 30.0]).reshape([1, 1, 6])
    bn = paddle.nn.BatchNorm1D(1)
    bn.eval()
    with paddle.no_grad():
        np.testing.assert_array_equal(cpu_ops.batch_norm_gelu(x, bn).numpy(), F.gelu(bn(x)).numpy())
        np.testing.assert_array_equal(cpu_ops.batch_norm_add(x, x, bn).numpy(), (x + bn(x)).numpy())
        np.testing.assert_array_equal(cpu_ops.gated_add(x, x, paddle.ones([1, 1])).numpy(), (x + x).numpy())
    assert calls == {'batch_norm_gelu_cpu': 1, 'batch_norm_add_cpu': 1, 'gated_add_cpu': 1}


def test_inference_kernels_only_without_gradients_and_with_running_statistics():
    """The fused kernels have no backward and use the running statistics: gradients and training-mode BNs take
    Paddle's ops."""
    x = paddle.randn([2, 4, 3, 3])
    bn = running_batchnorm(4)
    with paddle.no_grad():
        assert cpu_ops._kernels_for(x, inference=True) is cpu_ops.kernels()
    trainable = paddle.randn([2, 4, 3, 3])
    trainable.stop_gradient = False
    assert cpu_ops._kernels_for(trainable, inference=True) is None
    gradient = paddle.grad([cpu_ops.batch_norm_gelu(trainable, bn).sum()], [trainable])[0]
    expected = paddle.grad([F.gelu(bn(trainable)).sum()], [trainable])[0]
    assert relative_error(gradient.numpy(), expected.numpy()) <= 1e-6
    bn.train()
    with paddle.no_grad():
        np.testing.assert_array_equal(cpu_ops.batch_norm_add(x, x, bn).numpy(), (x + bn(x)).numpy())


def test_a_failed_build_warns_and_falls_back(monkeypatch, tmp_path):
    def no_compiler(*args):
        raise RuntimeError('g++: command not found')
    monkeypatch.setattr(cpu_ops, '_compile', no_compiler)
    monkeypatch.setattr(cpu_ops.cpp_extension, 'get_build_directory', lambda: str(tmp_path))
    monkeypatch.setattr(cpu_ops, 'cpu_has_avx2', lambda: True)
    monkeypatch.setattr(cpu_ops, '_kernels', {})
    x = paddle.randn([2, 4, 3, 3])
    with pytest.warns(UserWarning, match=r'did not build \(g\+\+: command not found\)'):
        output = cpu_ops.gelu(x)
    np.testing.assert_array_equal(output.numpy(), F.gelu(x).numpy())
    gate, bias = paddle.rand([2, 4, 1, 1]), paddle.randn([2, 9])
    with paddle.no_grad():
        output = cpu_ops.gated_add(x, x, gate, bias)
    assert relative_error(output.numpy(), gated_add_with_bias(x, x, gate, bias).numpy()) <= 1e-6


def test_a_build_says_so_and_a_reload_is_quiet(monkeypatch, tmp_path, capsys):
    """The ~10 s build announces itself on stderr; loading what was built from the same source and flags says
    nothing; other flags build again."""
    def compile_stand_in(folder, *flags):
        os.makedirs(os.path.join(folder, cpu_ops.NAME), exist_ok=True)
        open(os.path.join(folder, cpu_ops.NAME, f'{cpu_ops.NAME}.so'), 'w').close()
    monkeypatch.setattr(cpu_ops, '_compile', compile_stand_in)
    monkeypatch.setattr(cpu_ops.extension_utils, '_import_module_from_library', lambda *args: 'module')
    monkeypatch.setattr(cpu_ops.cpp_extension, 'get_build_directory', lambda: str(tmp_path))
    assert cpu_ops._build() == 'module'
    assert capsys.readouterr().err.startswith('building the C++ CPU kernels (')
    assert cpu_ops._build() == 'module'
    assert capsys.readouterr().err == ''
    monkeypatch.setattr(cpu_ops, 'BUILD_FLAGS', cpu_ops.BUILD_FLAGS + ['-g'])
    assert cpu_ops._build() == 'module'
    assert capsys.readouterr().err.startswith('building the C++ CPU kernels (')


def test_the_compiler_runs_in_its_own_process_and_its_error_reaches_the_warning(monkeypatch, tmp_path, capfd):
    """The compiler's output is captured from the child that runs it; this process's stdout and stderr are never
    redirected: what it prints meanwhile still reaches them, and the warning names the compiler's last line."""
    broken = tmp_path / 'broken.cc'
    broken.write_text('this is not C++\n')
    monkeypatch.setattr(cpu_ops, 'SOURCE', str(broken))
    monkeypatch.setattr(cpu_ops.cpp_extension, 'get_build_directory', lambda: str(tmp_path / 'build'))
    print('before the build', flush=True)
    with pytest.warns(UserWarning, match=r'did not build \(.*broken.cc:1:1: error: '):
        assert cpu_ops._build() is None
    out, err = capfd.readouterr()
    assert out == 'before the build\n'
    assert err.startswith('building the C++ CPU kernels (') and err.count('\n') == 1  # the compiler's lines: none


def test_the_switch_turns_the_kernels_off_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.setattr(cpu_ops, '_kernels', {})
    monkeypatch.setenv('REPMLP_CPU_KERNELS', '0')
    assert cpu_ops.kernels() is None
    x = paddle.randn([3, 5])
    np.testing.assert_array_equal(cpu_ops.gelu(x).numpy(), F.gelu(x).numpy())
    monkeypatch.setattr(cpu_ops, '_kernels', {})
    monkeypatch.setenv('REPMLP_CPU_KERNELS', 'off')
    with pytest.raises(cpu_ops.UserError, match="REPMLP_CPU_KERNELS='off': use 1"):
        cpu_ops.kernels()


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


@pytest.mark.parametrize('kernel_size', [3, 5])
@pytest.mark.parametrize('trainable', ['both', 'images', 'kernel'])
@pytest.mark.parametrize('shape', [[2, 6, 9, 7], [1, 64, 40, 40]], ids=['small', 'threaded'])
def test_depthwise_conv_matches_paddle_values_and_gradients(kernel_size, trainable, shape, monkeypatch):
    """Against F.conv2d's values and gradients, with either input frozen."""
    calls = spy_on_kernels(monkeypatch)
    images, kernel = paddle.randn(shape), paddle.randn([shape[1], 1, kernel_size, kernel_size])
    images.stop_gradient = trainable == 'kernel'
    kernel.stop_gradient = trainable == 'images'
    weights = paddle.randn(shape)
    expected = F.conv2d(images, kernel, padding=kernel_size // 2, groups=shape[1])
    output = cpu_ops.depthwise_conv(images, kernel)
    assert relative_error(output.numpy(), expected.numpy()) <= 1e-6
    inputs = [t for t in (images, kernel) if not t.stop_gradient]
    grads = paddle.grad([(output * weights).sum()], inputs)
    expected_grads = paddle.grad([(expected * weights).sum()], inputs)
    for grad, expected_grad in zip(grads, expected_grads):
        assert relative_error(grad.numpy(), expected_grad.numpy()) <= 1e-6
    assert calls == {'depthwise_conv_cpu': 1}


def test_global_norm_of_many_tensors(monkeypatch):
    calls = spy_on_kernels(monkeypatch)
    rng = np.random.default_rng(2)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in ([3, 5], [7], [300, 400], [2, 1, 3, 3])]
    expected = np.sqrt(sum(np.sum(a.astype(np.float64) ** 2) for a in arrays))
    norm = cpu_ops.global_norm([paddle.to_tensor(a) for a in arrays])
    assert abs(norm - expected) <= 1e-6 * expected
    assert calls == {'sum_of_squares_cpu': 1}
    assert cpu_ops.global_norm([paddle.to_tensor(arrays[0]).astype('float64')]) is None  # Paddle's clipping then
