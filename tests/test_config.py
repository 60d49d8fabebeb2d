"""config.py: defaults, yaml files, BASE inheritance, flags, -opts and validation errors."""

import glob
import os

import pytest

from config import ConfigError, build_arg_parser, get_config, update_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PADDLEVIT_B224 = """DATA:
    IMAGE_SIZE: 224
    CROP_PCT: 0.875
MODEL:
    TYPE: RepMLP
    NAME: repmlp_b_224
    CHANNELS: [96, 192, 384, 768]
    HEIGHTS: [56, 28, 14, 7]
    WIDTHS: [56, 28, 14, 7]
    NUM_BLOCKS: [2, 2, 12, 2]
    REPARAM_CONV_K: [1, 3]
    SHARESETS_NUMS: [1, 4, 32, 128]
    DEPLOY: False
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('cfg_file', sorted(glob.glob(os.path.join(ROOT, 'configs', '*.yaml'))))
def test_every_config_loads_frozen(cfg_file):
    config = get_config(cfg_file)
    assert config.is_frozen()
    if os.path.basename(cfg_file).startswith('repmlp_'):  # the zoo's files are named after their variant
        assert os.path.basename(cfg_file) == config.MODEL.NAME + '.yaml'


def test_paddlevit_yaml_loads_unchanged(tmp_path):
    config = get_config(write(tmp_path, 'b224.yaml', PADDLEVIT_B224))
    assert config.MODEL.SHARESETS_NUMS == [1, 4, 32, 128]
    assert config == get_config(os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml'))


def test_base_inheritance_and_override(tmp_path):
    write(tmp_path, 'base.yaml', PADDLEVIT_B224)
    child = write(tmp_path, 'child.yaml', "BASE: ['base.yaml']\nMODEL:\n    NUM_CLASSES: 5\n")
    config = get_config(child)
    assert config.MODEL.NUM_CLASSES == 5 and config.MODEL.NUM_BLOCKS == [2, 2, 12, 2]


def parse(argv):
    return build_arg_parser('test').parse_args(argv)


def test_flags_and_opts_override_yaml():
    args = parse(['-cfg', os.path.join(ROOT, 'configs', 'repmlp_t_224.yaml'), '-image_size', '448',
                  '-opts', 'MODEL.DEPLOY', 'True', 'DATA.CROP_PCT', '1'])
    config = update_config(get_config(), args)
    assert config.DATA.IMAGE_SIZE == 448 and config.MODEL.DEPLOY is True
    assert config.DATA.CROP_PCT == 1.0 and isinstance(config.DATA.CROP_PCT, float)
    assert config.is_frozen()


@pytest.mark.parametrize('text, message', [
    ('MODEL:\n    NO_SUCH_KEY: 1\n', 'unknown config key MODEL.NO_SUCH_KEY'),
    ('MODEL:\n    NUM_CLASSES: ten\n', 'MODEL.NUM_CLASSES expects int'),
    ('MODEL:\n    NUM_CLASSES: [1\n', 'yaml syntax error'),
    ("BASE: ['missing.yaml']\n", 'BASE file not found'),
    ('MODEL:\n    HEIGHTS: [56, 28, 14, 6]\n    WIDTHS: [56, 28, 14, 6]\n', 'MODEL.HEIGHTS[3]'),
    ('MODEL:\n    NUM_BLOCKS: [2, 2, 12]\n', 'one entry per stage'),
    ('MODEL:\n    SHARESETS_NUMS: [1, 4, 32, 100]\n', 'MODEL.SHARESETS_NUMS[3]=100'),
    ('MODEL:\n    REPARAM_CONV_K: [2]\n', 'MODEL.REPARAM_CONV_K'),
])
def test_bad_config_names_file_and_key(tmp_path, text, message):
    path = write(tmp_path, 'bad.yaml', text)
    with pytest.raises(ConfigError) as err:
        get_config(path)
    assert message in str(err.value)
    assert '\n' not in str(err.value)


def test_bad_opts_are_errors():
    with pytest.raises(ConfigError, match='MODEL.NOPE'):
        update_config(get_config(), parse(['-opts', 'MODEL.NOPE', '1']))
    with pytest.raises(ConfigError, match='odd number'):
        update_config(get_config(), parse(['-opts', 'MODEL.DEPLOY']))
    with pytest.raises(ConfigError, match='DATA.IMAGE_SIZE=200'):
        update_config(get_config(), parse(['-image_size', '200']))


def test_model_and_recipe_combine_and_training_flags_map():
    args = parse(['-cfg', os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml'),
                  os.path.join(ROOT, 'configs', 'recipes', 'official.yaml'),
                  '-output', 'out', '-accum_iter', '2', '-resume', 'auto', '-amp', '-last_epoch', '3'])
    config = update_config(get_config(), args)
    assert config.MODEL.NAME == 'repmlp_b_224' and config.TRAIN.NUM_EPOCHS == 100 and config.AUG.RECIPE == 'raug15'
    assert (config.SAVE, config.TRAIN.ACCUM_ITER, config.MODEL.RESUME, config.AMP, config.TRAIN.LAST_EPOCH) == (
        'out', 2, 'auto', True, 3)
    with pytest.raises(ConfigError, match='-eval needs'):
        update_config(get_config(), parse(['-eval']))
    with pytest.raises(ConfigError, match='AMP_DTYPE'):
        update_config(get_config(), parse(['-opts', 'AMP_DTYPE', 'float8']))
