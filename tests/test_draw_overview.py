"""tools/draw_overview.py: it runs, writes the expected PNG, reads its numbers from the config, and the
committed docs/repmlpnet_overview.png is what the script draws now."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from draw_overview import HEIGHT, WIDTH, render_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COMMITTED = os.path.join(ROOT, 'docs', 'repmlpnet_overview.png')


def _run(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'draw_overview.py'), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


@pytest.fixture(scope='module')
def drawn(tmp_path_factory):
    """The default picture, drawn now into a temporary file."""
    path = tmp_path_factory.mktemp('overview') / 'overview.png'
    result = _run('-output', str(path))
    assert result.returncode == 0, result.stderr
    return Image.open(path)


def test_writes_a_png_of_the_expected_size(drawn):
    assert drawn.format == 'PNG' and drawn.size == (WIDTH, HEIGHT) and drawn.mode == 'RGB'
    assert drawn.size[0] == 1600


def test_numbers_come_from_the_config(tmp_path):
    path = tmp_path / 'demo.png'
    assert _run('-cfg', 'configs/demo.yaml', '-output', str(path)).returncode == 0
    labels = Image.open(path).text['labels']
    assert 'repmlp_demo_32' in labels and 'C = 128' in labels and 'FC -> 6' in labels
    assert 'share-sets S = 8' in labels and 'partition 8 x 8' in labels and '4 x FC 4 -> 4' in labels


def test_bad_config_is_one_line_and_exit_code_2(tmp_path):
    result = _run('-cfg', str(tmp_path / 'missing.yaml'), '-output', str(tmp_path / 'x.png'))
    assert result.returncode == 2 and result.stderr.startswith('error:') and len(result.stderr.splitlines()) == 1


def test_committed_picture_is_up_to_date(drawn):
    committed = Image.open(COMMITTED)
    regenerate = 'regenerate it: python tools/draw_overview.py'
    assert committed.text['labels'] == drawn.text['labels'], f'{COMMITTED} is stale; {regenerate}'
    if committed.text['render'] != render_info():
        pytest.skip(f'pixels not compared: drawn with {committed.text["render"]}, this machine has {render_info()}')
    same = np.array_equal(np.asarray(committed.convert('RGB')), np.asarray(drawn.convert('RGB')))
    assert same, f'{COMMITTED} differs from what the script draws now; {regenerate}'
