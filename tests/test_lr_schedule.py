"""tools/lr_schedule.py: the CSV and chart of a run's LRs, as a user runs it."""

import csv
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFICIAL = [os.path.join(ROOT, 'configs', 'repmlp_t_224.yaml'),
            os.path.join(ROOT, 'configs', 'recipes', 'official.yaml')]


def lr_schedule(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'lr_schedule.py'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


def test_csv_and_chart_of_the_official_recipe(tmp_path):
    """8 processes x 32 images, 5 steps per epoch: the official code's 500 LRs (tests/fixtures/official_train.npz)."""
    code, out, err = lr_schedule('-cfg', *OFFICIAL, '-steps_per_epoch', '5', '-world_size', '8',
                                 '-csv', str(tmp_path / 'lr.csv'), '-png', str(tmp_path / 'lr.png'))
    assert code == 0, err
    with open(tmp_path / 'lr.csv', encoding='utf-8') as file:
        rows = list(csv.DictReader(file))
    assert [int(row['step']) for row in rows] == list(range(500))
    assert [int(row['epoch']) for row in rows] == [step // 5 + 1 for step in range(500)]
    official = np.load(os.path.join(ROOT, 'tests', 'fixtures', 'official_train.npz'))['schedule']
    np.testing.assert_allclose([float(row['lr']) for row in rows], official, rtol=0, atol=1e-12)
    assert Image.open(tmp_path / 'lr.png').size[0] > 0
    # the official warmup ends one batch short of the peak
    assert out.startswith('500 optimizer steps (official schedule)') and 'peak 0.00098 at step 50,' in out


def test_batch_and_resume_flags_shape_the_rows(tmp_path):
    """Half the processes halve every LR; -last_epoch 40 starts the rows at step 200 with the same values."""
    path = tmp_path / 'half.csv'
    assert lr_schedule('-cfg', *OFFICIAL, '-steps_per_epoch', '5', '-world_size', '4', '-last_epoch', '40',
                       '-csv', str(path))[0] == 0
    with open(path, encoding='utf-8') as file:
        rows = list(csv.DictReader(file))
    official = np.load(os.path.join(ROOT, 'tests', 'fixtures', 'official_train.npz'))['schedule']
    assert int(rows[0]['step']) == 200 and len(rows) == 300
    np.testing.assert_allclose([float(row['lr']) for row in rows], official[200:] / 2, rtol=1e-12, atol=1e-15)


@pytest.mark.slow
def test_bad_usage_is_one_line_and_writes_nothing(tmp_path):
    code, _, err = lr_schedule('-cfg', *OFFICIAL, '-steps_per_epoch', '0', '-csv', str(tmp_path / 'x.csv'))
    assert code == 2 and err.strip() == 'error: -steps_per_epoch must be positive, got 0'
    code, _, err = lr_schedule('-cfg', *OFFICIAL, '-steps_per_epoch', '5')
    assert code == 2 and len(err.strip().splitlines()) == 1 and '-csv FILE, -png FILE' in err
    code, _, err = lr_schedule('-cfg', *OFFICIAL, '-steps_per_epoch', '5', '-csv', str(tmp_path / 'no' / 'x.csv'))
    assert code == 2 and 'does not exist' in err
    assert os.listdir(tmp_path) == []


def test_committed_chart_is_up_to_date(tmp_path):
    """docs/official_lr_schedule.png (shown in README) is what README's command draws now."""
    drawn = tmp_path / 'official.png'
    assert lr_schedule('-cfg', os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml'), OFFICIAL[1], '-steps_per_epoch',
                       '5004', '-world_size', '8', '-png', str(drawn))[0] == 0
    committed = np.asarray(Image.open(os.path.join(ROOT, 'docs', 'official_lr_schedule.png')))
    assert np.array_equal(committed, np.asarray(Image.open(drawn))), 'regenerate it with README\'s command'
