"""run_train_multi.sh and run_eval_multi.sh as the upstream README calls them (`sh SCRIPT`: dash on Debian), with
their documented variables, on the demo data and the CPU."""

import json
import os
import shutil
import subprocess

import paddle
import pytest
import yaml

import datasets
from config import get_config
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')
SH = shutil.which('dash') or 'sh'


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    """The demo data and freshly initialised tiny-model weights."""
    root = tmp_path_factory.mktemp('scripts')
    datasets.write_demo_dataset(str(root / 'demo'))
    weights = str(root / 'tiny.pdparams')
    paddle.save(build_repmlp(get_config(TINY)).state_dict(), weights)
    return root


def run_script(script, cwd, *args, **variables):
    env = {**os.environ, 'OMP_NUM_THREADS': '1', **variables}
    return subprocess.run([SH, os.path.join(ROOT, script), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_eval_script_under_posix_sh_on_cpu_processes(demo):
    result = run_script('run_eval_multi.sh', demo, MODE='cpu', NPROCS='2', CFG=TINY, WEIGHTS='tiny.pdparams',
                        DATA='demo', OUT='eval')
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((demo / 'eval' / 'metrics.json').read_text())
    assert metrics['num_images'] == 120


@pytest.mark.slow
def test_eval_script_launch_mode_on_a_cpu_machine(demo):
    """MODE=launch starts paddle.distributed.launch with --nproc_per_node (no GPU here); its logs go to OUT."""
    result = run_script('run_eval_multi.sh', demo, MODE='launch', NPROCS='2', CFG=TINY, WEIGHTS='tiny.pdparams',
                        DATA='demo', OUT='eval_launch')
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    assert json.loads((demo / 'eval_launch' / 'metrics.json').read_text())['num_images'] == 120
    assert os.path.isdir(demo / 'eval_launch' / 'launch_logs') and not os.path.exists(demo / 'log')


@pytest.mark.slow
def test_train_script_takes_its_recipe_from_recipe(demo):
    """RECIPE= (empty) trains the model config alone: the tiny config's LR, not the official recipe's."""
    result = run_script('run_train_multi.sh', demo, '-opts', 'TRAIN.NUM_EPOCHS', '1', MODE='cpu', NPROCS='2',
                        CFG=TINY, RECIPE='', DATA='demo', OUT='train')
    assert result.returncode == 0, result.stderr[-3000:]
    resolved = yaml.safe_load((demo / 'train' / 'config.yaml').read_text())
    assert resolved['TRAIN']['BASE_LR'] == 0.01 and resolved['TRAIN']['LR_SCHEDULE'] == 'paddlevit'
    assert (demo / 'train' / 'checkpoint-0001.pdparams').is_file()


def test_a_bad_mode_is_one_line(demo):
    result = run_script('run_eval_multi.sh', demo, MODE='gpu')
    assert result.returncode == 2 and result.stderr == "error: MODE must be spawn, launch or cpu, got 'gpu'\n"
