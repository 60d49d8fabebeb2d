"""tools/export.py: the static model (Paddle Inference, ONNX) gives the dygraph training-time model's outputs."""

import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

from export import create_predictor, onnx_session, predictor_run
from helpers import randomize_batchnorms, relative_error, tiny_config
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_export(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'export.py'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


def test_export_matches_the_training_time_model(tmp_path):
    config = tiny_config(tmp_path)
    paddle.seed(0)
    model = build_repmlp(config)
    randomize_batchnorms(model, paddle.randn([4, 3, 32, 32]))
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

    # batch sizes other than those the export checked: the batch dimension is dynamic
    predictor, session = create_predictor(str(out)), onnx_session(str(out / 'model.onnx'))
    for batch in (2, 5):
        images = np.random.default_rng(batch).standard_normal((batch, 3, 32, 32)).astype(np.float32)
        with paddle.no_grad():
            expected = model(paddle.to_tensor(images)).numpy()
        assert relative_error(predictor_run(predictor, images), expected) <= 1e-5
        onnx_out = session.run(None, {session.get_inputs()[0].name: images})[0]
        assert relative_error(onnx_out, expected) <= 1e-4

    # weights of another model: one line, exit code 2, nothing written
    code, stdout, stderr = run_export('-cfg', str(tmp_path / 'tiny.yaml'), '-pretrained', weights, '-output',
                                      str(tmp_path / 'bad'), '-opts', 'MODEL.CHANNELS', '[8, 16, 32, 128]')
    assert code == 2 and 'does not match the model' in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / 'bad').exists()


def test_benchmark_infer_times_the_three_forms(tmp_path, capsys):
    import benchmark
    tiny_config(tmp_path)
    assert benchmark.main(['infer', '-cfg', str(tmp_path / 'tiny.yaml'), '-batch_sizes', '1', '2',
                           '-repeats', '1']) == 0
    out = capsys.readouterr().out
    assert 'cores' in out.splitlines()[0] and 'matmul (the peak)' in out
    for form in ('training-time', 'deploy', 'exported, Paddle Inference'):
        assert sum(line.startswith(form) for line in out.splitlines()) == 2, out


def test_onnx_without_its_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """paddle2onnx is only in requirements-dev.txt: without it, -onnx stops before the export folder exists."""
    import export
    real_find_spec = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, 'find_spec',
                        lambda name: None if name == 'paddle2onnx' else real_find_spec(name))
    config = tiny_config(tmp_path)
    output = tmp_path / 'export'
    with pytest.raises(export.UserError, match='-onnx needs the package paddle2onnx: pip install -r '
                                               'requirements-dev.txt'):
        export.export(config, str(tmp_path / 'missing.pdparams'), str(output), onnx=True)
    assert not output.exists()
