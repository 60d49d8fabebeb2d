"""checkpoint.py: reading weights and checkpoints (strictly, with one-line errors), the atomic write that every
replaced file goes through, the checkpoint schema, pruning and -resume auto."""

import errno
import json
import os

import numpy as np
import paddle
import pytest

import checkpoint
from checkpoint import CheckpointError, load_weights, save_atomically
from helpers import fake_checkpoint, tiny_config
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


# ---------------------------------------------------------------------------------------------- reading

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


def test_not_a_paddle_file_and_missing_file(tmp_path):
    model = build_repmlp(tiny_config(tmp_path))
    junk = tmp_path / 'junk.pdparams'
    junk.write_bytes(b'\x00not a pickle')
    with pytest.raises(CheckpointError, match='is not a Paddle weights file'):
        load_weights(model, str(junk))
    with pytest.raises(CheckpointError, match='is not a Paddle checkpoint'):
        checkpoint.load_checkpoint(str(junk))
    with pytest.raises(CheckpointError, match='not found'):
        load_weights(model, str(tmp_path / 'absent.pdparams'))


def test_weights_of_another_variant_name_the_mismatch(tmp_path):
    tiny = tiny_config(tmp_path)
    other = tiny.clone()
    other.defrost()
    other.MODEL.CHANNELS = [8, 16, 32, 32]
    other.MODEL.SHARESETS_NUMS = [1, 2, 4, 4]
    path = str(tmp_path / 'other.pdparams')
    paddle.save(build_repmlp(other).state_dict(), path)
    with pytest.raises(CheckpointError, match='another variant') as error:
        load_weights(build_repmlp(tiny), path)
    assert 'with another shape' in str(error.value)


def test_weights_only_file_given_to_resume(tmp_path):
    path = str(tmp_path / 'best.pdparams')
    paddle.save({'w': paddle.zeros([2])}, path)
    with pytest.raises(CheckpointError, match='use -pretrained instead of -resume'):
        checkpoint.load_checkpoint(path)


def test_weights_named_without_their_extension_get_a_hint(tmp_path):
    """PaddleViT's scripts name weights without .pdparams; the error says which file was meant."""
    path = str(tmp_path / 'best')
    paddle.save({'w': paddle.zeros([2])}, path + '.pdparams')
    with pytest.raises(CheckpointError, match=f'weights file not found: {path}; did you mean {path}.pdparams'):
        checkpoint.read_state_dict(path)
    with pytest.raises(CheckpointError, match=f'did you mean {path}.pdparams'):
        checkpoint.load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r'not found: \S+$'):
        checkpoint.read_state_dict(str(tmp_path / 'other'))


@pytest.mark.parametrize('flag', ['-pretrained', '-resume'])
def test_a_pytorch_file_names_the_converter(flag, tmp_path):
    torch_file = os.path.join(FIXTURES, 'official_small_train.pth')
    with pytest.raises(CheckpointError, match='convert_torch_weights.py'):
        (checkpoint.read_state_dict if flag == '-pretrained' else checkpoint.load_checkpoint)(torch_file)


# ---------------------------------------------------------------------------------------------- writing

def test_a_write_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    """Whatever fails half-way, a serializer's bug or the disk, `path` keeps its old bytes and nothing else is left."""
    path = str(tmp_path / 'metrics.json')
    checkpoint.write_text_atomically(path, 'old\n')

    def fails_half_way(temporary):
        with open(temporary, 'w', encoding='utf-8') as file:
            file.write('half of the n')
        raise TypeError('cannot serialize')

    with pytest.raises(TypeError, match='cannot serialize'):
        checkpoint.write_atomically(path, fails_half_way)
    with pytest.raises(AttributeError, match="Can't pickle"):  # an object that paddle.save cannot pickle
        save_atomically({'w': lambda: None}, path)
    assert open(path, encoding='utf-8').read() == 'old\n'
    assert os.listdir(tmp_path) == ['metrics.json']


def test_a_write_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """What makes the rename safe against a power cut: the data on disk before it, the new name after it."""
    path = str(tmp_path / 'best.pdparams')
    events, real_fsync, real_replace = [], os.fsync, os.replace

    def fsync(descriptor):
        events.append(('fsync', os.path.basename(os.readlink(f'/proc/self/fd/{descriptor}'))))
        real_fsync(descriptor)

    def replace(source, target):
        events.append(('replace', os.path.basename(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, 'fsync', fsync)
    monkeypatch.setattr(os, 'replace', replace)
    save_atomically({'w': np.ones(2, 'float32')}, path)
    temporary = f'.best.pdparams.tmp{os.getpid()}'
    assert events == [('fsync', temporary), ('replace', 'best.pdparams'), ('fsync', tmp_path.name)]
    assert float(paddle.load(path)['w'][1]) == 1.0


def test_json_files_are_replaced_whole_and_logs_appended(tmp_path):
    path = str(tmp_path / 'metrics.json')
    checkpoint.write_json({'acc1': 0.5}, path)
    checkpoint.write_json({'acc1': 0.75}, path)
    checkpoint.write_json({'epoch': 1}, path, append=True)
    assert [json.loads(line) for line in open(path, encoding='utf-8')] == [{'acc1': 0.75}, {'epoch': 1}]

# ------------------------------------------------------------------------------------------ checkpoints

def test_a_failing_save_keeps_the_previous_checkpoint_and_says_why(tmp_path, monkeypatch):
    folder = str(tmp_path)
    first = checkpoint.save_checkpoint(folder, 2, **fake_checkpoint(1))
    real_save = paddle.save

    def disk_full(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)  # part of the file is written, then the disk is full
        with open(path, 'r+b') as file:
            file.truncate(10)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(paddle, 'save', disk_full)
    with pytest.raises(CheckpointError) as error:
        checkpoint.save_checkpoint(folder, 1, **fake_checkpoint(2))
    assert 'checkpoint-0002.pdparams' in str(error.value) and 'No space left on device' in str(error.value)
    assert os.listdir(folder) == ['checkpoint-0001.pdparams']  # no temporary left, the old one not pruned
    assert float(checkpoint.load_checkpoint(first)['model']['w'][0]) == 1.0
    assert checkpoint.resolve_resume('auto', folder) == first


def test_a_failing_rename_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    folder = str(tmp_path)
    first = checkpoint.save_checkpoint(folder, 2, **fake_checkpoint(1))

    def read_only(*args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, 'replace', read_only)
    with pytest.raises(CheckpointError, match='Read-only file system'):
        checkpoint.save_checkpoint(folder, 1, **fake_checkpoint(2))
    assert os.listdir(folder) == ['checkpoint-0001.pdparams']
    assert checkpoint.load_checkpoint(first)['epoch'] == 1


def test_stale_temporaries_of_a_killed_save_are_ignored_and_cleaned(tmp_path):
    folder = str(tmp_path)
    first = checkpoint.save_checkpoint(folder, 3, **fake_checkpoint(1))
    stale = [tmp_path / '.checkpoint-0002.pdparams.tmp99999999', tmp_path / '.best.pdparams.tmp99999998']
    for path in stale:
        path.write_bytes(open(first, 'rb').read()[:100])  # what a SIGKILL half-way through leaves
    assert checkpoint.list_checkpoints(folder) == [first]
    assert checkpoint.resolve_resume('auto', folder) == first
    second = checkpoint.save_checkpoint(folder, 3, **fake_checkpoint(2))
    assert sorted(os.listdir(folder)) == ['checkpoint-0001.pdparams', 'checkpoint-0002.pdparams']
    assert checkpoint.load_checkpoint(second)['epoch'] == 2


def test_checkpoints_keep_last_and_resume_auto(tmp_path):
    folder = str(tmp_path)
    assert checkpoint.resolve_resume('auto', folder) is None
    for epoch in (1, 2, 3, 10):
        checkpoint.save_checkpoint(folder, 2, **fake_checkpoint(epoch))
    names = sorted(os.listdir(folder))
    assert names == ['checkpoint-0003.pdparams', 'checkpoint-0010.pdparams']
    assert checkpoint.resolve_resume('auto', folder).endswith('checkpoint-0010.pdparams')
    assert checkpoint.load_checkpoint(checkpoint.resolve_resume('auto', folder))['epoch'] == 10
    assert checkpoint.resolve_resume('some/file.pdparams', folder) == 'some/file.pdparams'


def test_checkpoint_schema_is_enforced(tmp_path):
    with pytest.raises(ValueError):
        checkpoint.save_checkpoint(str(tmp_path), 1, **{**fake_checkpoint(1), 'extra': 1})
    weights = str(tmp_path / 'weights.pdparams')
    save_atomically({'w': np.ones(2, 'float32')}, weights)
    with pytest.raises(CheckpointError, match='use -pretrained'):
        checkpoint.load_checkpoint(weights)
    with pytest.raises(CheckpointError, match='not found'):
        checkpoint.load_checkpoint(str(tmp_path / 'missing.pdparams'))


def test_a_resumed_run_drops_the_log_lines_it_will_write_again(tmp_path):
    log = tmp_path / 'log.jsonl'
    log.write_text(''.join(f'{{"epoch": {epoch}, "train_loss": 1.0}}\n' for epoch in range(1, 5)))
    checkpoint.drop_epochs_after(str(log), 2)
    assert [line for line in log.read_text().splitlines()] == ['{"epoch": 1, "train_loss": 1.0}',
                                                                 '{"epoch": 2, "train_loss": 1.0}']
