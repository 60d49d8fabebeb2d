"""tools/convert_torch_weights.py and the model against the official PyTorch fixtures (tests/fixtures/README.md)."""

import json
import os
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import paddle
import pytest

from config import get_config
from convert_torch_weights import read_torch_checkpoint
from repmlp import build_repmlp
from checkpoint import CheckpointError, load_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def fixture_yaml(tmp_path, name):
    """A config file for the fixture's architecture (its npz stores the official constructor's arguments).

    The 64x64 inputs give maps of several partitions, where the official merge order shows (see RepMLPBlock).
    """
    args = json.loads(str(np.load(os.path.join(FIXTURES, f'official_{name}.npz'))['config']))
    path = tmp_path / f'{name}.yaml'
    path.write_text(
        f"DATA:\n  IMAGE_SIZE: 32\nMODEL:\n  NAME: official_{name}\n  NUM_CLASSES: {args['num_class']}\n"
        f"  CHANNELS: {args['channels']}\n  HEIGHTS: {args['hs']}\n  WIDTHS: {args['ws']}\n"
        f"  NUM_BLOCKS: {args['num_blocks']}\n  REPARAM_CONV_K: {args['reparam_conv_k']}\n"
        f"  SHARESETS_NUMS: {args['sharesets_nums']}\n  OFFICIAL_PARTITION_ORDER: True\n")
    return str(path)


def convert(cfg, src, dst):
    """Run the converter as a user does; return (exit code, stdout + stderr)."""
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'convert_torch_weights.py'),
                             '-cfg', cfg, '-src', src, '-dst', dst], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def relative_error(output, reference):
    return float(np.abs(output - reference).max() / np.abs(reference).max())


def load_converted(cfg, pdparams, deploy):
    config = get_config(cfg)
    config.defrost()
    config.MODEL.DEPLOY = deploy
    model = load_weights(build_repmlp(config), pdparams)
    model.eval()
    return model


def run(model, array):
    with paddle.no_grad():
        return model(paddle.to_tensor(array)).numpy()


@pytest.mark.parametrize('name', ['small', 'rect'])
def test_converted_weights_give_official_logits(tmp_path, name):
    cfg = fixture_yaml(tmp_path, name)
    data = np.load(os.path.join(FIXTURES, f'official_{name}.npz'))
    for form, deploy in [('train', False), ('deploy', True)]:
        dst = str(tmp_path / f'{form}.pdparams')
        code, output = convert(cfg, os.path.join(FIXTURES, f'official_{name}_{form}.pth'), dst)
        assert code == 0, output
        assert ('deploy form' if deploy else 'training-time form') in output
        model = load_converted(cfg, dst, deploy)
        for input_key, suffix in [('input', ''), ('input_64', '_64')]:
            assert relative_error(run(model, data[input_key]), data[f'logits_{form}{suffix}']) <= 1e-5
    # locality injection of the converted training-time weights gives the official deploy logits
    model = load_converted(cfg, str(tmp_path / 'train.pdparams'), deploy=False).locality_injection()
    for input_key, suffix in [('input', ''), ('input_64', '_64')]:
        assert relative_error(run(model, data[input_key]), data[f'logits_deploy{suffix}']) <= 1e-5


def rewrap_torch_file(src, dst, wrap):
    """Copy a torch.save archive with its state dict wrapped by `wrap` (edits data.pkl without torch)."""
    with zipfile.ZipFile(src) as archive, zipfile.ZipFile(dst, 'w') as out:
        for item in archive.infolist():
            data = archive.read(item)
            if item.filename.endswith('data.pkl'):
                data = wrap(data)
            out.writestr(item, data)


def wrap_in_model_with_module_prefix(pickled):
    """Pickle bytes of {'model': <state with 'module.' keys>, 'epoch': 3}: edits the key strings in place."""
    body = pickled[2:-1]  # between PROTO 2 and STOP
    text = body
    for key in set(read_keys(pickled)):
        old = pickle.dumps(key, protocol=2)[2:-1]
        new = pickle.dumps('module.' + key, protocol=2)[2:-1]
        text = text.replace(old, new)
    # EMPTY_DICT, 'model', <state>, 'epoch', 3, SETITEMS-free: use two SETITEM ops
    return (b'\x80\x02}' + pickle.dumps('model', protocol=2)[2:-1] + text + b's'
            + pickle.dumps('epoch', protocol=2)[2:-1] + b'K\x03s.')


def read_keys(pickled):
    keys = []
    for op, arg, _ in __import__('pickletools').genops(pickled):
        if op.name in ('BINUNICODE', 'SHORT_BINUNICODE') and '.' in arg and not arg.endswith('storage'):
            keys.append(arg)
    return keys


def test_wrapped_checkpoint_with_module_prefix(tmp_path):
    src = os.path.join(FIXTURES, 'official_small_train.pth')
    wrapped = str(tmp_path / 'wrapped.pth')
    rewrap_torch_file(src, wrapped, wrap_in_model_with_module_prefix)
    plain, unwrapped = read_torch_checkpoint(src), read_torch_checkpoint(wrapped)
    assert sorted(plain) == sorted(unwrapped)
    assert all(np.array_equal(plain[k], unwrapped[k]) for k in plain)


def test_mismatched_variant_lists_keys(tmp_path):
    cfg = fixture_yaml(tmp_path, 'small')
    other = tmp_path / 'other.yaml'
    other.write_text(open(cfg).read().replace('NUM_CLASSES: 10', 'NUM_CLASSES: 7').replace('[1, 1, 2, 1]', '[1, 1, 1, 1]'))
    dst = tmp_path / 'x.pdparams'
    code, output = convert(str(other), os.path.join(FIXTURES, 'official_small_train.pth'), str(dst))
    assert code == 2 and not dst.exists()
    assert 'unexpected: stages.2.1.' in output and 'head.weight [64, 10] (model [64, 7])' in output
    assert len(output.strip().splitlines()) == 1


def test_not_a_torch_file(tmp_path):
    bad = tmp_path / 'bad.pth'
    bad.write_bytes(b'not a checkpoint')
    code, output = convert(fixture_yaml(tmp_path, 'small'), str(bad), str(tmp_path / 'x.pdparams'))
    assert code == 2 and 'not a torch.save zip archive' in output


def test_pth_given_as_paddle_weights(tmp_path):
    model = build_repmlp(get_config(fixture_yaml(tmp_path, 'small')))
    with pytest.raises(CheckpointError, match='convert it first with tools/convert_torch_weights.py'):
        load_weights(model, os.path.join(FIXTURES, 'official_small_train.pth'))
