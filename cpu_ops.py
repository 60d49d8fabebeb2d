"""CPU operations through this project's C++ kernels (csrc/cpu_ops.cc), with Paddle's ops as the fallback.

Paddle's CPU GELU makes several passes over memory, and a BN, a gate or a residual add one pass each; the kernels
make one pass for each group of operations, with the same values (to float32 rounding), on the threads of the
OpenMP runtime that Paddle's MKL uses:
- `gelu`, forward and backward;
- in inference only (no gradients, running statistics): `batch_norm_gelu`, `batch_norm_add` and `gated_add`, which
  RepMLPNet applies after its products;
- `depthwise_conv`, forward and backward, for the local perceptron's training-time branch on large partitions
  (Paddle's CPU kernel for the images' gradient is several times slower than its forward);
- `global_norm` of many tensors in one pass, for gradient clipping (engine.GlobalNormClip).
README's Speed section has what each saves.

The kernels are built on first use with paddle.utils.cpp_extension (g++, about 10 s, kept in Paddle's extension
folder for the next runs; processes starting together build them once) on x86-64 CPUs with AVX2, in a child
process whose output is kept for the error message. Elsewhere, for tensors that are not float32 on the CPU (GPU,
AMP), in static graphs (export), with REPMLP_CPU_KERNELS=0, or if the build fails (one warning), each function
computes the same with Paddle's ops.
"""

import hashlib
import json
import os
import platform
import subprocess
import sys
import warnings

import runtime  # noqa: F401  (before paddle: CPU threads, MKL path, a quiet import)
import paddle
import paddle.nn.functional as F
from paddle.utils import cpp_extension
from paddle.utils.cpp_extension import extension_utils

from config import UserError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'csrc', 'cpu_ops.cc')
# -fopenmp-simd: the `omp simd` loops with or without an OpenMP runtime; no -ffast-math (see the source)
BUILD_FLAGS = ['-O3', '-mavx2', '-mfma', '-fopenmp-simd', '-fno-math-errno']
# Intel's OpenMP runtime that Paddle's MKL uses, shipped in Paddle's wheel: the kernels' threads are its threads
INTEL_OPENMP = os.path.join(os.path.dirname(paddle.__file__), 'libs', 'libiomp5.so')


def openmp_flags():
    """(compile flags, link flags) that run the kernels' parallel loops on Paddle's libiomp5, or none (one thread)
    where Paddle has no libiomp5. -fopenmp only when compiling: linking with it would pull in GCC's libgomp."""
    if not os.path.isfile(INTEL_OPENMP):
        return [], []
    folder = os.path.dirname(INTEL_OPENMP)
    return ['-fopenmp'], [f'-L{folder}', '-l:libiomp5.so', f'-Wl,-rpath,{folder}']


SWITCH = 'REPMLP_CPU_KERNELS'  # '0' computes everything with Paddle's ops (to compare, or to rule the kernels out)
NAME = 'repmlp_cpu_ops'
# The child that compiles: cpp_extension.load writes its setup script, runs the compiler and imports the result,
# printing along the way; in a child, all of it lands in the pipes this process reads.
COMPILE_SCRIPT = 'import json, sys; from paddle.utils import cpp_extension; cpp_extension.load(**json.loads(sys.argv[1]))'

_kernels = {}  # 'cpu_ops': the loaded module, or None when it is switched off or cannot be built here


def cpu_has_avx2():
    """Whether this is an x86-64 Linux CPU with AVX2 (the kernel's build flags need it)."""
    if platform.machine() not in ('x86_64', 'AMD64') or not os.path.isfile('/proc/cpuinfo'):
        return False
    with open('/proc/cpuinfo', encoding='ascii', errors='replace') as cpuinfo:
        return any(line.startswith('flags') and ' avx2' in line for line in cpuinfo)


def kernels_switched_on():
    """False when REPMLP_CPU_KERNELS is 0; a value other than 0 or 1 is a UserError naming the variable."""
    value = os.environ.get(SWITCH, '1').strip()
    if value not in ('0', '1'):
        raise UserError(f'{SWITCH}={value!r}: use 1 (the C++ CPU kernels, the default) or 0 (Paddle\'s ops only)')
    return value == '1'


def _signature(compile_flags, link_flags):
    """What a build depends on (the source and the flags), as Paddle's cpp_extension decides whether to rebuild."""
    with open(SOURCE, 'rb') as source:
        content = source.read()
    return hashlib.sha256(content + repr((BUILD_FLAGS, compile_flags, link_flags)).encode()).hexdigest()


def _compile(folder, compile_flags, link_flags):
    """Build the library into `folder` in a child process; on failure a RuntimeError with the compiler's first
    error line (or the child's last line)."""
    arguments = dict(name=NAME, sources=[SOURCE], extra_cxx_cflags=BUILD_FLAGS + compile_flags,
                     extra_ldflags=link_flags, build_directory=folder, verbose=False)
    child = subprocess.run([sys.executable, '-c', COMPILE_SCRIPT, json.dumps(arguments)],
                           capture_output=True, text=True)
    if child.returncode != 0:
        lines = (child.stderr + child.stdout).strip().splitlines()
        errors = [line.strip() for line in lines if 'error:' in line]
        raise RuntimeError(errors[0] if errors else lines[-1] if lines else f'the build exited with {child.returncode}')


def _build():
    """The compiled module, built (once per source and flags) or reloaded under a file lock; None with a warning
    if it cannot be built. A build says so on stderr first."""
    import fcntl  # POSIX only, like the kernel's build
    folder = os.path.join(cpp_extension.get_build_directory(), NAME)
    stamp = os.path.join(folder, 'built_from.sha256')
    try:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, 'build.lock'), 'w') as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # ranks starting together: one builds, the others load its result
            compile_flags, link_flags = openmp_flags()
            signature = _signature(compile_flags, link_flags)
            library = os.path.join(folder, NAME, f'{NAME}.so')
            if not os.path.isfile(library) or not os.path.isfile(stamp) or _read(stamp) != signature:
                print(f'building the C++ CPU kernels ({os.path.relpath(SOURCE)} into {folder}; about 10 s, once)',
                      file=sys.stderr, flush=True)
                _compile(folder, compile_flags, link_flags)
                with open(stamp, 'w', encoding='ascii') as file:
                    file.write(signature)
            # cpp_extension.load would run the setup script again (and print); this is the import step alone
            return extension_utils._import_module_from_library(NAME, os.path.join(folder, NAME))
    except Exception as error:  # noqa: BLE001  (any build failure: the fallback is exact, only slower)
        message = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        warnings.warn(f'the C++ CPU kernels did not build ({message}); using Paddle\'s ops')
        return None


def _read(path):
    with open(path, encoding='ascii') as file:
        return file.read()


def kernels():
    """The loaded C++ module (ops `gelu_cpu`, `batch_norm_gelu_cpu`, `batch_norm_add_cpu`, `gated_add_cpu`,
    `depthwise_conv_cpu`, `sum_of_squares_cpu`), or None where it is not available or switched off."""
    if 'cpu_ops' not in _kernels:
        _kernels['cpu_ops'] = _build() if kernels_switched_on() and cpu_has_avx2() else None
    return _kernels['cpu_ops']


def _kernels_for(*tensors, inference=False):
    """The module if its kernels take `tensors` (float32 on the CPU, in dygraph; with `inference`, also no gradient
    to compute, since those kernels have none), else None."""
    if not paddle.in_dynamic_mode() or any(not t.place.is_cpu_place() or t.dtype != paddle.float32 for t in tensors):
        return None
    if inference and paddle.is_grad_enabled() and not all(t.stop_gradient for t in tensors):
        return None
    return kernels()


def _contiguous(x):
    """x itself, or a contiguous copy of a strided view: the kernels read plain arrays."""
    return x if x.is_contiguous() else x.contiguous()


def gelu(x):
    """Exact (erf) GELU of `x`, with its gradient."""
    module = _kernels_for(x)
    return module.gelu_cpu(_contiguous(x)) if module is not None else F.gelu(x)


def _batch_norm_kernels(bn, *tensors):
    """(module, (mean, variance, weight, bias)) when the inference kernels can apply the BatchNorm layer `bn` with its
    running statistics next to `tensors`, else (None, None)."""
    if bn.training or bn._use_global_stats is False or bn._data_format not in ('NCHW', 'NCL', 'NC'):
        return None, None
    statistics = (bn._mean, bn._variance, bn.weight, bn.bias)
    module = _kernels_for(*tensors, *statistics, inference=True)
    return (module, statistics) if module is not None else (None, None)


def batch_norm_gelu(x, bn):
    """gelu(bn(x)) for x [N, C, ...] and a BatchNorm layer over its channels."""
    module, statistics = _batch_norm_kernels(bn, x)
    if module is None:
        return gelu(bn(x))
    return module.batch_norm_gelu_cpu(_contiguous(x), *statistics, bn._epsilon)


def batch_norm_add(residual, x, bn):
    """residual + bn(x) for x and residual [N, C, ...] and a BatchNorm layer over their channels; residual + x when
    `bn` is None (a BN folded away)."""
    if bn is None:
        return residual + x
    module, statistics = _batch_norm_kernels(bn, residual, x)
    if module is None:
        return residual + bn(x)
    return module.batch_norm_add_cpu(_contiguous(residual), _contiguous(x), *statistics, bn._epsilon)


def gated(x, gate, bias=None):
    """(x + bias) * gate for x [N, C, H, W], gate [N, C, 1, 1] (one value per map) and a bias [S, H*W] whose row
    c % S is added to the map of channel c (C a multiple of S), or None; with Paddle's ops."""
    if bias is not None:
        channels, height, width = x.shape[1:]
        sets = bias.shape[0]
        # [N, C, H, W] -> [N, C/S, S, H*W], to which the bias [S, H*W] broadcasts along the leading axes
        x = (x.reshape([-1, channels // sets, sets, height * width]) + bias).reshape([-1, channels, height, width])
    return x * gate


def gated_add(residual, x, gate, bias=None):
    """residual + gated(x, gate, bias), residual [N, C, H, W] like x."""
    module = _kernels_for(residual, x, gate, *([] if bias is None else [bias]), inference=True)
    if module is None:
        return residual + gated(x, gate, bias)
    return module.gated_add_cpu(_contiguous(residual), _contiguous(x), _contiguous(gate),
                                None if bias is None else _contiguous(bias))


def depthwise_conv(images, kernel):
    """Depthwise k x k conv (stride 1, zero padding k // 2, k odd) of images [N, C, H, W] with a kernel [C, 1, k, k],
    with its gradients: F.conv2d's values."""
    module = _kernels_for(images, kernel)
    if module is None:
        return F.conv2d(images, kernel, padding=kernel.shape[-1] // 2, groups=kernel.shape[0])
    return module.depthwise_conv_cpu(_contiguous(images), _contiguous(kernel))


def global_norm(tensors):
    """The L2 norm of all the values of `tensors` together (a Python float, summed in double), or None where the
    kernel does not take them (the caller then uses Paddle's ops): one pass over memory for all of them, where
    Paddle's gradient clipping runs one reduction per tensor."""
    if not tensors or any(t.is_selected_rows() for t in tensors):
        return None
    module = _kernels_for(*tensors)
    if module is None:
        return None
    return float(module.sum_of_squares_cpu([_contiguous(t) for t in tensors]).numpy()[0]) ** 0.5
