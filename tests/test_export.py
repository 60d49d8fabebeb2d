"""tools/export.py: the static model (Paddle Inference, ONNX) gives the dygraph training-time model's outputs."""

import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest

from helpers import relative_error, tiny_config, trained_like_model
from inference import create_predictor, onnx_run, onnx_session, predictor_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_export(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export.py'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


def test_export_matches_the_training_time_model(tmp_path):
    config = tiny_config(tmp_path)
    model = trained_like_model(config)
    weights = str(tmp_path / 'train.pdparams')
    paddle.save(model.state_dict(), weights)
    data = tmp_path / 'data'
    data.mkdir()
    (data / 'classes.txt').write_text(''.join(f'class_{i}\n' for i in range(10)))
    out = tmp_path / 'export'
    code, stdout, stderr = run_export('-cfg', str(tmp_path / 'tiny.yaml'), '-pretrained', weights,
                                      '-output', str(out), '-data_path', str(data), '-onnx')
    assert code == 0, stderr[-2000:]
    assert 'Paddle Inference predictor' in stdout and 'ONNX Runtime' in stdout
    names = sorted(os.listdir(out))
    assert {'config.yaml', 'classes.txt', 'model.pdiparams', 'model.onnx'} <= set(names), names
    assert not [name for name in names if name.startswith('.')]  # the staging folder is gone
    assert (out / 'classes.txt').read_text() == (data / 'classes.txt').read_text()
    operations = set(re.findall(r'"#":"1\.(\w+)"', (out / 'model.json').read_text()))  # the PIR program's ops
    assert 'conv2d' in operations and not [op for op in operations if 'batch_norm' in op], operations

    # batch sizes other than those the export checked: the batch dimension is dynamic
    predictor, session = create_predictor(str(out)), onnx_session(str(out / 'model.onnx'))
    for batch in (2, 5):
        images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        with paddle.no_grad():
            expected = model(paddle.to_tensor(images)).numpy()
        assert relative_error(predictor_run(predictor, images), expected) <= 1e-5
        assert relative_error(onnx_run(session, images), expected) <= 1e-4

    # weights of another model: one line, exit code 2, nothing written
    code, stdout, stderr = run_export('-cfg', str(tmp_path / 'tiny.yaml'), '-pretrained', weights, '-output',
                                      str(tmp_path / 'bad'), '-opts', 'MODEL.CHANNELS', '[8, 16, 32, 128]')
    assert code == 2 and 'does not match the model' in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'bad').exists()


@pytest.mark.slow
def test_benchmark_infer_times_the_three_forms(tmp_path, capsys):
    import benchmark
    tiny_config(tmp_path)
    assert benchmark.main(['infer', '-cfg', str(tmp_path / 'tiny.yaml'), '-batch_sizes', '1', '2',
                           '-repeats', '1']) == 0
    out = capsys.readouterr().out
    assert 'cores' in out.splitlines()[0] and 'matmul (the peak)' in out
    for form in ('training-time', 'deploy', 'exported, Paddle Inference'):
        assert sum(line.startswith(form) for line in out.splitlines()) == 2, out
