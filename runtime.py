"""Process set-up that must happen before paddle is imported: CPU threads, MKL's fast path, a quiet import; and,
once paddle is in, SIGINT and SIGTERM handlers of our own.

Import this module before paddle (repmlp.py and every entry point do). Values already in the environment win.
- OMP_NUM_THREADS: all the cores this process may use. Paddle otherwise runs its CPU kernels on one thread.
- MKL_DEBUG_CPU_TYPE=5 on AMD CPUs: Paddle's MKL picks a slow generic path on non-Intel CPUs; this selects
  its AVX2 kernels (measured on a 2-core EPYC: 2048^3 SGEMM 40 -> 130 GFLOP/s).
- SIGINT (Ctrl-C) and SIGTERM (kill, batch schedulers) raise StopRequested in the main thread, in place of
  Paddle's C++ handler, whose dump-and-abort can deadlock in malloc when the signal lands there (seen with
  paddle.distributed.spawn terminating a rank that was exiting).
- glibc keeps freed memory for reuse (mallopt), unless MALLOC_MMAP_THRESHOLD_ is set: by default every block
  above a few MB is a fresh mmap, and the page faults of touching it cost more than the op that fills it
  (copying a 39 MB tensor: 19.6 ms, 2.8 ms with reuse; B224 deploy inference 9.8 -> 11.6 images/s).
"""

import contextlib
import ctypes
import ctypes.util
import io
import os
import signal
import warnings


def _is_amd_cpu():
    try:
        with open('/proc/cpuinfo', encoding='ascii', errors='replace') as cpuinfo:
            return 'AuthenticAMD' in cpuinfo.read(4096)
    except OSError:
        return False


def usable_cores():
    """The number of CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def _reuse_freed_memory():
    """Ask glibc to serve large blocks from its heap and not to give freed memory back to the OS."""
    name = ctypes.util.find_library('c')
    if 'MALLOC_MMAP_THRESHOLD_' in os.environ or not name or 'libc' not in name:
        return
    libc = ctypes.CDLL(name)
    if not hasattr(libc, 'mallopt'):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    if not libc.mallopt(m_mmap_threshold, 2 ** 31 - 1):  # older glibc cap the threshold at 32 MiB
        libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)
    libc.mallopt(m_trim_threshold, 2 ** 31 - 1)


# Whether the user chose the thread count: a launcher that starts several processes on this machine must then
# leave it alone, and otherwise split the cores between them (main_multi_gpu.py).
THREADS_SET_BY_USER = 'OMP_NUM_THREADS' in os.environ
os.environ.setdefault('OMP_NUM_THREADS', str(usable_cores()))
_reuse_freed_memory()
if _is_amd_cpu():
    os.environ.setdefault('MKL_DEBUG_CPU_TYPE', '5')
# paddle's import warns about a missing ccache (a compiler cache for custom C++ ops, unused here) and prints
# a note to stderr whenever OMP_NUM_THREADS > 1; its spawn warns that CPU processes use gloo; its C++ side logs
# info and warning lines (store connections, static-graph notes). None of these asks anything of the user;
# errors still print.
warnings.filterwarnings('ignore', message='No ccache found')
warnings.filterwarnings('ignore', message='Your model will be trained under CPUONLY mode')
os.environ.setdefault('GLOG_minloglevel', '2')
with contextlib.redirect_stderr(io.StringIO()):
    import paddle  # noqa: E402,F401


class StopRequested(BaseException):
    """SIGINT or SIGTERM arrived; raised in the main thread where it was, like KeyboardInterrupt (no `except
    Exception` catches it). The entry points turn it into one line and exit code 128 + the signal number."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.message = f'stopped by {self.name}'  # the entry point adds where the run was and how to continue
        self.quiet = signum == PEER_FAILED  # the failed rank reports the cause


# main_multi_gpu.py stops the other ranks of a job one of whose ranks failed with this signal
PEER_FAILED = signal.SIGUSR1


def _request_stop(signum, _frame):
    """The first SIGINT or SIGTERM stops the run; later ones (a second Ctrl-C, a launcher passing the signal on)
    are ignored while it stops, so that they cannot interrupt the stop itself."""
    for stop_signal in (signal.SIGINT, signal.SIGTERM, PEER_FAILED):
        signal.signal(stop_signal, signal.SIG_IGN)
    raise StopRequested(signum)


def quiet_worker_signals(_worker_id=None):
    """For loader worker processes: Ctrl-C (SIGINT to the process group) is left to the main process, which shuts
    its workers down; SIGTERM ends a worker at once with exit code 0, which Paddle's loader in the main process
    does not report as a failure (death by the signal it does), and without Paddle's handler (whose dump can
    deadlock)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))


for _signal in (signal.SIGINT, signal.SIGTERM, PEER_FAILED):
    signal.signal(_signal, _request_stop)
