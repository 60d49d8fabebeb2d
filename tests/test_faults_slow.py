"""Faults that need whole runs: SIGKILL while saving, at a random point of an epoch and in a 2-process job, then
`-resume auto`; and a rank that fails on its own input. Marked slow (`pytest -m "not slow"` leaves them out).

The kill points come from fixed seeds, so that a failure repeats; where the process is when the signal lands
still varies with the machine's speed.
"""

import json
import os
import random
import shutil
import time

import pytest

import checkpoint
from datasets import LIST_FILES, TrainBatchSampler
from helpers import assert_same_checkpoint, finish_process, kill_group, start_process, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')
EPOCHS = 3

pytestmark = pytest.mark.slow


def train_args(data_path, output, nprocs=None, resume=False):
    script = ['main_single_gpu.py'] if nprocs is None else ['main_multi_gpu.py', '-nprocs', str(nprocs)]
    return script + (['-resume', 'auto'] if resume else []) + [
        '-cfg', TINY, '-data_path', data_path, '-output', output, '-opts', 'TRAIN.NUM_EPOCHS', str(EPOCHS),
        'TRAIN.MODEL_EMA', 'True', 'TRAIN.MODEL_EMA_DECAY', '0.9', 'REPORT_FREQ', '2']


def assert_same_run(straight, resumed):
    """Final checkpoints (weights, optimizer, EMA, schedule, best) and last epoch's metrics exactly equal."""
    name = f'checkpoint-{EPOCHS:04d}.pdparams'
    assert_same_checkpoint(os.path.join(straight, name), os.path.join(resumed, name))
    # every epoch logged exactly once, with the same numbers (timings aside), however the run was broken off
    logs = [[json.loads(line) for line in open(os.path.join(run, 'log.jsonl'), encoding='utf-8')]
            for run in (straight, resumed)]
    assert [e['epoch'] for e in logs[1]] == list(range(1, EPOCHS + 1))
    for a_epoch, b_epoch in zip(*logs):
        for key in ('epoch', 'train_loss', 'lr', 'val_acc1', 'val_loss', 'ema_acc1', 'best_val_acc1',
                    'skipped_images'):
            assert a_epoch[key] == b_epoch[key], (a_epoch['epoch'], key)


@pytest.fixture(scope='module')
def demo_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data') / 'demo')


@pytest.fixture(scope='module')
def straight(demo_path, tmp_path_factory):
    """One uninterrupted single-process run, and one 2-process run, started together: {'1': out, '2': out}."""
    outputs = {n: str(tmp_path_factory.mktemp(f'straight{n}')) for n in ('1', '2')}
    first = start_process(train_args(demo_path, outputs['1']))
    code, out, err = finish_process(first)  # writes the demo data before the two ranks both need it
    assert code == 0, (out + err)[-3000:]
    code, out, err = finish_process(start_process(train_args(demo_path, outputs['2'], nprocs=2)))
    assert code == 0, (out + err)[-3000:]
    return outputs


SAVER = """
import os, sys, time
sys.path.insert(0, {root!r})
import paddle, checkpoint
state = {{key: None for key in checkpoint.CHECKPOINT_KEYS}}
state.update(best_acc1={{}}, config='')
found = checkpoint.list_checkpoints({folder!r})
first = checkpoint.load_checkpoint(found[-1])['epoch'] + 1 if found else 1  # as -resume auto would
for epoch in range(first, first + 1000):
    state.update(epoch=epoch, model={{'w': paddle.full([{size}], float(epoch))}})
    print('writing', epoch, flush=True)
    checkpoint.save_checkpoint({folder!r}, 2, **state)
"""


@pytest.mark.parametrize('seed', [0, 1])
def test_sigkill_while_writing_checkpoints_leaves_only_complete_ones(tmp_path, seed):
    """A process saving 40 MB checkpoints in a loop is killed at moments drawn from `seed`; whatever -resume auto
    then picks is complete and loads, the temporaries it left are ignored, and the next save removes them."""
    random_ = random.Random(seed)
    folder = str(tmp_path)
    for attempt in range(3):
        process = start_process(['-c', SAVER.format(root=ROOT, folder=folder, size=10_000_000)])
        for _ in range(random_.randint(2, 4)):
            assert process.stdout.readline().startswith('writing'), process.stderr.read()
        time.sleep(random_.uniform(0.0, 0.3))
        kill_group(process)
        found = checkpoint.list_checkpoints(folder)
        chosen = checkpoint.resolve_resume('auto', folder)
        assert chosen == found[-1]
        for path in found:
            state = checkpoint.load_checkpoint(path)
            assert float(state['model']['w'][-1]) == state['epoch']
        print(attempt, 'left', sorted(os.listdir(folder)))
    checkpoint.save_checkpoint(folder, 2, **checkpoint.load_checkpoint(chosen))
    assert not [name for name in os.listdir(folder) if '.tmp' in name]


def test_sigkill_at_a_random_point_then_resume_auto_equals_a_straight_run(demo_path, straight, tmp_path):
    output = str(tmp_path)
    process = start_process(train_args(demo_path, output))
    # a logged step of the first half of epoch 2 (22 steps, a log line every 2): a point in the run's progress,
    # not in wall time, which changes with the machine and the model's speed
    step = 6
    wait_for(os.path.join(output, 'log.txt'), f'Epoch 2/{EPOCHS} [{step}/', process)
    kill_group(process)
    done = checkpoint.list_checkpoints(output)
    print('killed with', [os.path.basename(path) for path in done])
    assert done and len(done) < EPOCHS
    code, out, err = finish_process(start_process(train_args(demo_path, output, resume=True)))
    assert code == 0, (out + err)[-3000:]
    assert f'resumed from {done[-1]}' in out
    assert_same_run(straight['1'], output)


def test_two_process_job_killed_then_resumed_equals_a_straight_run(demo_path, straight, tmp_path):
    output = str(tmp_path)
    process = start_process(train_args(demo_path, output, nprocs=2))
    wait_for(os.path.join(output, 'log.txt'), 'saved', process)
    wait_for(os.path.join(output, 'log_rank1.txt'), f'Epoch 2/{EPOCHS} [2/', process)
    kill_group(process)  # the launcher and both ranks, in the middle of epoch 2
    done = checkpoint.list_checkpoints(output)
    assert [os.path.basename(path) for path in done] == ['checkpoint-0001.pdparams']
    code, out, err = finish_process(start_process(train_args(demo_path, output, nprocs=2, resume=True)))
    assert code == 0, (out + err)[-3000:]
    assert_same_run(straight['2'], output)


def test_a_rank_failing_on_its_own_input_ends_the_job_with_its_message(demo_path, straight, tmp_path):
    """Rank 1's first training batch holds an unreadable image that rank 0 never loads in epoch 1: rank 1 stops
    with a DatasetError while rank 0 waits in the gradient all-reduce. The job must end at once, not hang."""
    data = tmp_path / 'data'
    data.mkdir()
    for split in ('train', 'val'):
        os.symlink(os.path.join(demo_path, split), data / split)
    shutil.copy(os.path.join(demo_path, LIST_FILES[False]), data)
    lines = open(os.path.join(demo_path, LIST_FILES[True]), encoding='utf-8').read().splitlines()
    victim = next(iter(TrainBatchSampler(len(lines), 1, rank=1, world_size=2)))[0]  # rank 1's first image (SEED 0)
    lines[victim] = f'broken.JPEG {lines[victim].split()[-1]}'
    (data / 'broken.JPEG').write_bytes(b'\xff\xd8\xff\xe0' + b'\0' * 64)
    (data / LIST_FILES[True]).write_text('\n'.join(lines) + '\n')
    code, out, err = finish_process(start_process(
        ['main_multi_gpu.py', '-nprocs', '2', '-cfg', TINY, '-data_path', str(data), '-output', str(tmp_path / 'out'),
         '-opts', 'TRAIN.NUM_EPOCHS', '50']), timeout=120)
    print(f'ended with code {code}:\n{err[-2000:]}')
    assert code == 2
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'broken.JPEG: cannot read image' in errors[0], err[-3000:]
    assert 'Epoch 1/50' not in open(tmp_path / 'out' / 'log.txt', encoding='utf-8').read()
