"""README.md's two commands: the main job on the demo data runs end to end, and CI runs the test command."""

import os
import re
import shlex
import subprocess
import sys

import paddle
import pytest

from config import get_config
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
    """The bash blocks of the README's 'Two commands' section, in order."""
    with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as file:
        text = file.read()
    section = text.split('## Two commands', 1)[1].split('\n## ', 1)[0]
    return [block.strip() for block in re.findall(r'```bash\n(.*?)```', section, re.S)]


def test_ci_runs_the_readme_test_command():
    install_and_test = readme_commands()[1]
    with open(os.path.join(ROOT, '.ci', 'run'), encoding='utf-8') as file:
        assert install_and_test in file.read().splitlines()


def test_readme_main_command_trains_and_reports_accuracy(tmp_path):
    install, main_job = readme_commands()[0].split(' && ')
    assert install == 'pip install -r requirements.txt'
    words = shlex.split(main_job)
    # the same command, with its output and the demo data in a temporary folder
    words[words.index('-output') + 1] = str(tmp_path / 'out')
    words[0] = sys.executable
    words += ['-data_path', str(tmp_path / 'demo')]
    result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    final = result.stdout.strip().splitlines()[-1]
    accuracy = float(re.search(r'finished \d+ epochs: val top-1 ([0-9.]+)', final).group(1))
    assert accuracy > 0.5  # six classes: chance is 1/6
    for name in ('log.txt', 'log.jsonl', 'config.yaml', 'best.pdparams', 'curves.png'):
        assert (tmp_path / 'out' / name).is_file(), name


@pytest.mark.parametrize('cfg_file', sorted(
    os.path.join(ROOT, 'configs', name) for name in os.listdir(os.path.join(ROOT, 'configs')) if name.endswith('.yaml')))
def test_every_model_config_runs_a_forward_pass(cfg_file):
    config = get_config(cfg_file)
    model = build_repmlp(config)
    model.eval()
    size = config.DATA.IMAGE_SIZE
    with paddle.no_grad():
        logits = model(paddle.randn([1, 3, size, size]))
    assert list(logits.shape) == [1, config.MODEL.NUM_CLASSES]
