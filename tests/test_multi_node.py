"""Two launch nodes on this machine (`python -m paddle.distributed.launch --nnodes 2 --master 127.0.0.1:PORT`, one
CPU process each), as a job on two machines runs: with a shared output folder or a folder each, weights on node 0
only, a node killed mid-epoch. Marked slow (`pytest -m "not slow"` leaves them out)."""

import os
import shutil
import signal
import socket

import pytest

from helpers import assert_same_checkpoint, finish_process, start_process, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')

pytestmark = pytest.mark.slow


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def start_node(rank, port, folder, output, data, *args, epochs=3):
    """One launch node of two, started in `folder` (its own disk), writing into `output`; `args` are flags."""
    return start_process(['-m', 'paddle.distributed.launch', '--nnodes', '2', '--master', f'127.0.0.1:{port}',
                          '--rank', str(rank), '--nproc_per_node', '1', '--log_dir', os.path.join(output, 'launch'),
                          os.path.join(ROOT, 'main_multi_gpu.py'), '-cfg', TINY, '-dataset', 'imagenet2012',
                          '-data_path', data, '-output', output, *args,
                          '-opts', 'REPORT_FREQ', '2', 'TRAIN.NUM_EPOCHS', str(epochs)], cwd=folder)


def run_job(folders, outputs, data, *args, epochs=3):
    """Both nodes with `args`; returns [(exit code, stdout + stderr)] of node 0 and node 1."""
    port = free_port()
    nodes = [start_node(rank, port, folders[rank], outputs[rank], data, *args, epochs=epochs) for rank in (0, 1)]
    results = [finish_process(node, timeout=240) for node in nodes]
    return [(code, out + err) for code, out, err in results]


def assert_ok(results):
    for rank, (code, log) in enumerate(results):
        assert code == 0, f'node {rank}:\n{log[-3000:]}'


@pytest.fixture(scope='module')
def demo_data(tmp_path_factory):
    """The demo data (written by a short single-process run) and tiny-model weights to start from."""
    root = tmp_path_factory.mktemp('multi_node')
    data = str(root / 'demo')
    code, out, err = finish_process(start_process(['main_single_gpu.py', '-cfg', TINY, '-data_path', data,
                                                   '-output', str(root / 'first'), '-opts', 'TRAIN.NUM_EPOCHS', '1']))
    assert code == 0, (out + err)[-3000:]
    return root, data


def node_folders(root, name):
    folders = [root / name / f'node{rank}' for rank in (0, 1)]
    for folder in folders:
        folder.mkdir(parents=True)
    return [str(folder) for folder in folders]


def two_then_three_epochs(folders, outputs, data, weights):
    assert_ok(run_job(folders, outputs, data, '-pretrained', weights, epochs=2))
    assert_ok(run_job(folders, outputs, data, '-resume', 'auto', '-new_schedule', epochs=3))
    return os.path.join(outputs[0], 'checkpoint-0003.pdparams')


def test_a_folder_each_and_weights_on_node_0_only_equal_a_shared_folder(demo_data):
    """2 epochs from -pretrained weights, then -resume auto to 3: with a folder per node, and the weights in node 0's
    folder alone (a relative path that node 1 cannot open), the final checkpoint equals that of a shared folder
    with the weights visible to both, bit for bit."""
    root, data = demo_data
    weights = os.path.join(root, 'first', 'best.pdparams')
    shared = node_folders(root, 'shared')
    shared_output = os.path.join(root, 'shared', 'out')
    reference = two_then_three_epochs(shared, [shared_output] * 2, data, weights)

    apart = node_folders(root, 'apart')
    shutil.copy(weights, os.path.join(apart[0], 'weights.pdparams'))
    outputs = [os.path.join(folder, 'out') for folder in apart]
    final = two_then_three_epochs(apart, outputs, data, 'weights.pdparams')
    assert sorted(os.listdir(outputs[1])) == ['launch', 'log_rank1.txt']  # node 1 only logs
    assert 'resumed from' in open(os.path.join(outputs[1], 'log_rank1.txt'), encoding='utf-8').read()
    assert_same_checkpoint(reference, final)


def test_node_1_killed_mid_epoch_ends_node_0_with_the_lost_rank_then_resumes_to_the_same_weights(demo_data):
    root, data = demo_data
    straight = node_folders(root, 'straight')
    straight_outputs = [os.path.join(folder, 'out') for folder in straight]
    assert_ok(run_job(straight, straight_outputs, data))

    folders = node_folders(root, 'killed')
    outputs = [os.path.join(folder, 'out') for folder in folders]
    port = free_port()
    nodes = [start_node(rank, port, folders[rank], outputs[rank], data) for rank in (0, 1)]
    wait_for(os.path.join(outputs[0], 'log.txt'), 'Epoch 2/3 [6/', nodes[0])
    os.kill(nodes[1].pid, signal.SIGKILL)  # node 1's launcher; its rank dies with it
    # the bound: gloo's collective timeout (30 s) plus the heartbeat's 3 s; the kill itself is seen at once
    code, out, err = finish_process(nodes[0], timeout=60)
    nodes[1].communicate()
    # the launcher prints its rank's log (with the error line) when the rank failed
    errors = [line for line in (out + err).splitlines() if line.startswith('error:')]
    assert code != 0 and errors, (out + err)[-3000:]
    assert errors[0].startswith('error: rank 0 lost rank(s) 1 ') and 'checkpoint-0001.pdparams' in errors[0]

    assert_ok(run_job(folders, outputs, data, '-resume', 'auto'))
    assert_same_checkpoint(os.path.join(straight_outputs[0], 'checkpoint-0003.pdparams'),
                           os.path.join(outputs[0], 'checkpoint-0003.pdparams'))
