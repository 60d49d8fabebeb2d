"""Stopping a run with SIGINT or SIGTERM, as a terminal (Ctrl-C: the whole process group) and a batch scheduler
(the main process, or the group) send them: one line, exit code 130 or 143, nothing left running, and the run
continues from its last checkpoint."""

import os
import shlex
import signal
import subprocess

import pytest

from helpers import finish_process, start_process, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')


@pytest.fixture(scope='module')
def demo_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data') / 'demo')


def run_args(demo_path, output, nprocs):
    script = ['main_single_gpu.py'] if nprocs == 1 else ['main_multi_gpu.py', '-nprocs', str(nprocs)]
    return script + ['-cfg', TINY, '-data_path', demo_path, '-output', output,
                     '-opts', 'TRAIN.NUM_EPOCHS', '3', 'REPORT_FREQ', '2', 'DATA.NUM_WORKERS', '2']


def processes_of(output):
    """The processes (ranks, loader workers) whose command line names this run's output folder."""
    found = subprocess.run(['pgrep', '-f', f'-output {output}'], capture_output=True, text=True).stdout.split()
    return [pid for pid in found if int(pid) != os.getpid()]


@pytest.mark.parametrize('nprocs, signum, target, then_resume', [
    (1, signal.SIGINT, 'group', True),  # Ctrl-C in a terminal
    pytest.param(2, signal.SIGTERM, 'group', False, marks=pytest.mark.slow),  # a scheduler's notice to the job
    (1, signal.SIGTERM, 'main', False),  # kill PID
    pytest.param(1, signal.SIGINT, 'main', False, marks=pytest.mark.slow),
    pytest.param(1, signal.SIGTERM, 'group', False, marks=pytest.mark.slow),
    pytest.param(2, signal.SIGINT, 'group', True, marks=pytest.mark.slow),
    pytest.param(2, signal.SIGTERM, 'main', False, marks=pytest.mark.slow),
    pytest.param(2, signal.SIGINT, 'main', False, marks=pytest.mark.slow),
])
def test_a_stop_signal_ends_the_run_with_one_line(demo_path, tmp_path, nprocs, signum, target, then_resume):
    output = str(tmp_path / 'out')
    process = start_process(run_args(demo_path, output, nprocs))
    wait_for(os.path.join(output, 'log.txt'), 'Epoch 2/3 [4/', process)  # a checkpoint exists, workers run
    if target == 'group':
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)
    code, out, err = finish_process(process, timeout=60)
    name = signal.Signals(signum).name
    lines = [line for line in err.splitlines() if line.startswith('stopped') or line.startswith('error')
             or 'Traceback' in line or 'FatalError' in line]
    assert code == 128 + signum and len(lines) == 1, err[-3000:]
    checkpoint = os.path.join(output, 'checkpoint-0001.pdparams')
    assert lines[0].startswith(f'stopped by {name} in epoch 2/3; the last checkpoint is {checkpoint}; continue '
                               'with: python ')
    assert processes_of(output) == []
    if not then_resume:
        return
    command = shlex.split(lines[0].split('continue with: python ', 1)[1])
    assert command == run_args(demo_path, output, nprocs)[:-7] + ['-resume', 'auto'] + run_args(
        demo_path, output, nprocs)[-7:]
    code, out, err = finish_process(start_process(command), timeout=120)
    assert code == 0 and f'resumed from {checkpoint}' in out and 'finished 3 epochs' in out, (out + err)[-3000:]
