"""utils.py: strict loading of weights, atomic saving, rank helpers, meters, the checkpoint schema, -resume auto."""

import os

import numpy as np
import paddle
import pytest

import utils
from helpers import tiny_config
from repmlp import build_repmlp
from utils import CheckpointError, load_weights, save_atomically


def saved(tmp_path, state, name='w.pdparams'):
    path = str(tmp_path / name)
    save_atomically(state, path)
    return path


def test_round_trip_is_exact(tmp_path):
    config = tiny_config(tmp_path)
    source, target = build_repmlp(config), build_repmlp(config)
    load_weights(target, saved(tmp_path, source.state_dict()))
    for name, value in source.state_dict().items():
        assert (target.state_dict()[name].numpy() == value.numpy()).all(), name


def test_truncated_state_dict_names_the_key(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    state = model.state_dict()
    del state['stages.1.0.repmlp_block.fc3.weight']
    with pytest.raises(CheckpointError, match=r'1 missing: stages\.1\.0\.repmlp_block\.fc3\.weight'):
        load_weights(model, saved(tmp_path, state))


def test_misshaped_state_dict_names_the_key(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    state = model.state_dict()
    state['head.bias'] = paddle.zeros([3])
    with pytest.raises(CheckpointError, match=r'head\.bias \[3\] \(model \[10\]\)'):
        load_weights(model, saved(tmp_path, state))


def test_deploy_weights_for_training_model_say_what_to_pass(tmp_path):
    config = tiny_config(tmp_path)
    deploy_path = saved(tmp_path, build_repmlp(config).locality_injection().state_dict())
    with pytest.raises(CheckpointError, match='MODEL.DEPLOY True'):
        load_weights(build_repmlp(config), deploy_path)
    train_path = saved(tmp_path, build_repmlp(config).state_dict(), 'train.pdparams')
    with pytest.raises(CheckpointError, match='MODEL.DEPLOY False'):
        load_weights(build_repmlp(config).locality_injection(), train_path)


def test_not_a_checkpoint_and_missing_file(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    junk = tmp_path / 'junk.pdparams'
    junk.write_bytes(b'\x00not a pickle')
    with pytest.raises(CheckpointError, match='not a Paddle weights file'):
        load_weights(model, str(junk))
    with pytest.raises(CheckpointError, match='not found'):
        load_weights(model, str(tmp_path / 'absent.pdparams'))


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = saved(tmp_path, {'a': paddle.ones([2])})
    before = open(path, 'rb').read()

    def disk_full(obj, target):
        with open(target, 'wb') as file:
            file.write(b'partial')
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(paddle, 'save', disk_full)
    with pytest.raises(CheckpointError, match='No space left on device'):
        save_atomically({'a': paddle.zeros([2])}, path)
    assert open(path, 'rb').read() == before
    assert os.listdir(tmp_path) == [os.path.basename(path)]


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
