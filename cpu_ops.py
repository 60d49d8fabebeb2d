"""The exact GELU through this project's C++ CPU kernel (csrc/gelu_cpu.cc), with Paddle's F.gelu as the fallback.

Paddle's CPU GELU makes several passes over memory; the kernel makes one pass forward and one backward, with the
same values (to float32 rounding) and gradients. A T224 training step: 874 -> 852 ms, 829 -> 817 ms in another run
(inference, where the GELU is bound by memory bandwidth, gains nothing measurable).

The kernel is built on first use with paddle.utils.cpp_extension (g++, about 10 s, kept in Paddle's extension
folder for the next runs; processes starting together build it once) on x86-64 CPUs with AVX2. Elsewhere, for
tensors that are not float32 on the CPU (GPU, AMP), in static graphs (export), or if the build fails (one warning),
`gelu` is F.gelu.
"""

import contextlib
import os
import platform
import sys
import warnings

import paddle
import paddle.nn.functional as F
from paddle.utils import cpp_extension

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'gelu_cpu.cc')
# -fopenmp-simd: the `omp simd` loops, without an OpenMP runtime; no -ffast-math (see the source)
BUILD_FLAGS = ['-O3', '-mavx2', '-mfma', '-fopenmp-simd', '-fno-math-errno']

_kernels = {}  # 'gelu_cpu': the loaded module, or None when it cannot be built here


def cpu_has_avx2():
    """Whether this is an x86-64 Linux CPU with AVX2 (the kernel's build flags need it)."""
    if platform.machine() not in ('x86_64', 'AMD64') or not os.path.isfile('/proc/cpuinfo'):
        return False
    with open('/proc/cpuinfo', encoding='ascii', errors='replace') as cpuinfo:
        return any(line.startswith('flags') and ' avx2' in line for line in cpuinfo)


@contextlib.contextmanager
def silenced_output():
    """Send this process's stdout and stderr, Python's and the C library's alike, to /dev/null for a while: the
    build's compiler and Paddle's import notes write to the file descriptors directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(os.devnull, 'w') as devnull:
        os.dup2(devnull.fileno(), 1)
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _build():
    """The compiled module, built or reloaded under a file lock; None with a warning if it cannot be built."""
    import fcntl  # POSIX only, like the kernel's build
    folder = os.path.join(cpp_extension.get_build_directory(), 'repmlp_gelu_cpu')
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, 'build.lock'), 'w') as lock, silenced_output():
            fcntl.flock(lock, fcntl.LOCK_EX)  # ranks starting together: one builds, the others load its result
            return cpp_extension.load(name='repmlp_gelu_cpu', sources=[SOURCE], extra_cxx_cflags=BUILD_FLAGS,
                                      build_directory=folder, verbose=False)
    except Exception as error:  # noqa: BLE001  (any build failure: the fallback is exact, only slower)
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(f'the C++ GELU kernel did not build ({message}); using Paddle\'s F.gelu')
        return None


def gelu_kernel():
    """The loaded C++ module (its op is `gelu_cpu`), or None where it is not available."""
    if 'gelu_cpu' not in _kernels:
        _kernels['gelu_cpu'] = _build() if cpu_has_avx2() else None
    return _kernels['gelu_cpu']


def gelu(x):
    """Exact (erf) GELU of `x`: the C++ kernel for float32 CPU tensors in dygraph, otherwise F.gelu."""
    if paddle.in_dynamic_mode() and x.place.is_cpu_place() and x.dtype == paddle.float32:
        kernel = gelu_kernel()
        if kernel is not None:
            return kernel.gelu_cpu(x if x.is_contiguous() else x.contiguous())
    return F.gelu(x)
