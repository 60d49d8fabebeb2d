"""utils.py: single-process rank helpers, meters, the checkpoint schema, -resume auto."""

import os

import numpy as np
import pytest

import utils
from utils import CheckpointError


def test_rank_helpers_in_one_process():
    assert utils.get_world_size() == 1 and utils.get_rank() == 0 and utils.is_main_process()
    np.testing.assert_array_equal(utils.all_reduce_sum([1, 2.5]), [1.0, 2.5])


def test_average_meter():
    meter = utils.AverageMeter()
    assert meter.avg == 0.0
    meter.update(2.0, 3)
    meter.update(4.0, 1)
    assert meter.avg == 2.5 and meter.global_avg() == 2.5


def state(epoch):
    return dict(model={'w': np.ones(2, 'float32')}, optimizer={}, lr_scheduler={}, scaler={}, ema=None, epoch=epoch,
                best_acc1={'val': 0.5}, config='')


def test_checkpoints_keep_last_and_resume_auto(tmp_path):
    folder = str(tmp_path)
    assert utils.resolve_resume('auto', folder) is None
    for epoch in (1, 2, 3, 10):
        utils.save_checkpoint(folder, 2, **state(epoch))
    names = sorted(os.listdir(folder))
    assert names == ['checkpoint-0003.pdparams', 'checkpoint-0010.pdparams']
    assert utils.resolve_resume('auto', folder).endswith('checkpoint-0010.pdparams')
    assert utils.load_checkpoint(utils.resolve_resume('auto', folder))['epoch'] == 10
    assert utils.resolve_resume('some/file.pdparams', folder) == 'some/file.pdparams'


def test_checkpoint_schema_is_enforced(tmp_path):
    with pytest.raises(ValueError):
        utils.save_checkpoint(str(tmp_path), 1, **{**state(1), 'extra': 1})
    weights = str(tmp_path / 'weights.pdparams')
    utils.save_atomically({'w': np.ones(2, 'float32')}, weights)
    with pytest.raises(CheckpointError, match='use -pretrained'):
        utils.load_checkpoint(weights)
    with pytest.raises(CheckpointError, match='not found'):
        utils.load_checkpoint(str(tmp_path / 'missing.pdparams'))
