"""Configuration of RepMLPNet runs: yacs defaults, yaml files, command-line flags.

Order of precedence (later wins): the defaults below -> the yaml file given with `-cfg` (and the files
its `BASE:` list names, relative to it) -> PaddleViT's flags (`-batch_size`, ...) -> `-opts KEY VALUE ...`.
The result is validated and frozen; a bad key, type or value raises `ConfigError` naming it.
"""

import argparse
import ast
import math
import os

import yaml
from yacs.config import CfgNode as CN


class UserError(Exception):
    """A mistake in what the user gave (a file, a flag, a value): reported as one line, exit code 2."""


class ConfigError(UserError):
    """A config file, key or value that cannot be used."""


_C = CN()
_C.BASE = ['']  # yaml files merged before this one, relative to it

_C.DATA = CN()
_C.DATA.IMAGE_SIZE = 224  # side of the square network input, in pixels
_C.DATA.CROP_PCT = 0.875  # eval: resize to floor(IMAGE_SIZE / CROP_PCT), then center-crop IMAGE_SIZE
_C.DATA.DATASET = 'imagenet2012'  # 'imagenet2012': the list files under DATA_PATH; 'demo': a small generated set
_C.DATA.DATA_PATH = ''  # folder holding train_list.txt, val_list.txt and the images; for 'demo', '' is ./data/demo
_C.DATA.BATCH_SIZE = 32  # training images per step and per process
_C.DATA.BATCH_SIZE_EVAL = 32  # evaluation images per step and per process
_C.DATA.NUM_WORKERS = 2  # DataLoader worker processes per training process; 0 loads in the main process
_C.DATA.IMAGENET_MEAN = [0.485, 0.456, 0.406]  # per-channel RGB mean subtracted on the device, on the 0-1 scale
_C.DATA.IMAGENET_STD = [0.229, 0.224, 0.225]  # per-channel RGB std divided by on the device, on the 0-1 scale
_C.DATA.INTERPOLATION = 'bilinear'  # eval resize filter (PIL, antialiased): 'bilinear', 'bicubic', 'lanczos', 'nearest'
_C.DATA.RESIZE_MODE = 'shorter'  # eval: 'shorter' side to floor(IMAGE_SIZE / CROP_PCT), or 'square' (squash both sides)
_C.DATA.SKIP_BAD_IMAGES = False  # training: log an unreadable image and use another one instead of stopping

_C.AUG = CN()
_C.AUG.RECIPE = 'paddlevit'  # training augmentation: 'paddlevit' (DeiT-style) or 'raug15' (official RepMLPNet)
_C.AUG.AUTO_AUGMENT = 'rand'  # paddlevit recipe: 'rand' (RandAugment), 'auto' (AutoAugment) or 'none' (ColorJitter)
_C.AUG.RAND_MAGNITUDE = 9  # paddlevit RandAugment: mean magnitude (std 0.5) on the 0-10 scale
_C.AUG.RAND_LAYERS = 2  # paddlevit RandAugment: operations drawn per image
_C.AUG.COLOR_JITTER = 0.4  # paddlevit recipe with AUTO_AUGMENT 'none': brightness/contrast/saturation strength
_C.AUG.RE_PROB = 0.25  # paddlevit recipe: probability of random erasing (pixel mode, one box)
_C.AUG.MIXUP = 0.8  # Mixup alpha; 0 turns Mixup off
_C.AUG.CUTMIX = 1.0  # CutMix alpha; 0 turns CutMix off
_C.AUG.MIXUP_PROB = 1.0  # probability that a batch is mixed at all
_C.AUG.MIXUP_SWITCH_PROB = 0.5  # with both on: probability that a mixed batch uses CutMix rather than Mixup
_C.AUG.SMOOTHING = 0.1  # label smoothing folded into the soft targets of Mixup/CutMix

_C.MODEL = CN()
_C.MODEL.TYPE = 'RepMLP'  # network family; 'RepMLP' (PaddleViT's name) and 'RepMLPNet' are the same
_C.MODEL.NAME = 'repmlp_b_224'  # variant name, used in logs and file names
_C.MODEL.NUM_CLASSES = 1000  # outputs of the classifier head
_C.MODEL.CHANNELS = [96, 192, 384, 768]  # channels of each stage
_C.MODEL.HEIGHTS = [56, 28, 14, 7]  # partition height h of each stage
_C.MODEL.WIDTHS = [56, 28, 14, 7]  # partition width w of each stage
_C.MODEL.NUM_BLOCKS = [2, 2, 12, 2]  # RepMLPNet units in each stage
_C.MODEL.REPARAM_CONV_K = [1, 3]  # kernel sizes of the local perceptron's conv branches (odd)
_C.MODEL.SHARESETS_NUMS = [1, 4, 32, 128]  # share-sets of the channel perceptron fc3 in each stage
_C.MODEL.DEPLOY = False  # build the locality-injected form (fc3 with bias, no conv branches)

MODEL_TYPES = ('RepMLP', 'RepMLPNet')
PATCH_SIZE = 4  # stride of the stem; each later stage halves the map again
STAGE_LIST_KEYS = ('CHANNELS', 'HEIGHTS', 'WIDTHS', 'NUM_BLOCKS', 'SHARESETS_NUMS')
DATASETS = ('imagenet2012', 'demo')
INTERPOLATIONS = ('bilinear', 'bicubic', 'lanczos', 'nearest')
RESIZE_MODES = ('shorter', 'square')
AUG_RECIPES = ('paddlevit', 'raug15')
AUTO_AUGMENTS = ('rand', 'auto', 'none')

# PaddleViT's command-line flags and the config key each one sets.
FLAG_TO_KEY = {
    'image_size': 'DATA.IMAGE_SIZE',
    'dataset': 'DATA.DATASET',
    'data_path': 'DATA.DATA_PATH',
    'batch_size': 'DATA.BATCH_SIZE',
    'batch_size_eval': 'DATA.BATCH_SIZE_EVAL',
}


def get_config(cfg_file=None):
    """Return a frozen copy of the defaults, merged with `cfg_file` (and its BASE files) if given."""
    config = _C.clone()
    if cfg_file:
        _merge_yaml_file(config, cfg_file, seen=())
    validate_config(config)
    config.freeze()
    return config


def update_config(config, args):
    """Apply the flags in `args` (an argparse namespace from `build_arg_parser`) and return the frozen config.

    `args.cfg` is merged first when `config` is still the defaults' copy, then each flag that was given,
    then `args.opts` (KEY VALUE pairs, values parsed as Python literals when they are ones).
    """
    config.defrost()
    if getattr(args, 'cfg', None):
        _merge_yaml_file(config, args.cfg, seen=())
    for flag, key in FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        if value is not None and value is not False:
            _set_key(config, key, value, source='flag -' + flag)
    opts = getattr(args, 'opts', None) or []
    if len(opts) % 2:
        raise ConfigError(f'-opts takes KEY VALUE pairs; got an odd number of words: {" ".join(opts)}')
    for key, text in zip(opts[0::2], opts[1::2]):
        _set_key(config, key, _parse_literal(text), source='-opts')
    validate_config(config)
    config.freeze()
    return config


def build_arg_parser(description):
    """An argparse parser with `-cfg`, `-opts` and the PaddleViT flags known to FLAG_TO_KEY."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument('-cfg', type=str, default=None, help='yaml config file, e.g. configs/repmlp_b_224.yaml')
    parser.add_argument('-image_size', type=int, default=None, help='input side in pixels (DATA.IMAGE_SIZE)')
    parser.add_argument('-dataset', type=str, default=None, choices=DATASETS, help='DATA.DATASET')
    parser.add_argument('-data_path', type=str, default=None, help='folder with the list files (DATA.DATA_PATH)')
    parser.add_argument('-batch_size', type=int, default=None, help='training batch per process (DATA.BATCH_SIZE)')
    parser.add_argument('-batch_size_eval', type=int, default=None,
                        help='evaluation batch per process (DATA.BATCH_SIZE_EVAL)')
    parser.add_argument('-opts', nargs='+', default=None, metavar='KEY VALUE',
                        help='override any config key, e.g. -opts MODEL.DEPLOY True')
    return parser


def validate_config(config):
    """Raise ConfigError naming the key if the architecture or a value cannot work."""
    model = config.MODEL
    if model.TYPE not in MODEL_TYPES:
        raise ConfigError(f'MODEL.TYPE is {model.TYPE!r}; this repository builds {" or ".join(MODEL_TYPES)}')
    for key in STAGE_LIST_KEYS + ('REPARAM_CONV_K',):
        values = model[key]
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ConfigError(f'MODEL.{key} must be a list of positive integers, got {list(values)}')
    lengths = {key: len(model[key]) for key in STAGE_LIST_KEYS}
    if len(set(lengths.values())) != 1:
        raise ConfigError('MODEL.CHANNELS, HEIGHTS, WIDTHS, NUM_BLOCKS and SHARESETS_NUMS need one entry per '
                          f'stage; their lengths are {lengths}')
    if any(k % 2 == 0 for k in model.REPARAM_CONV_K):
        raise ConfigError(f'MODEL.REPARAM_CONV_K must hold odd kernel sizes, got {list(model.REPARAM_CONV_K)}')
    if model.NUM_CLASSES < 1:
        raise ConfigError(f'MODEL.NUM_CLASSES must be positive, got {model.NUM_CLASSES}')
    if not 0 < config.DATA.CROP_PCT <= 1:
        raise ConfigError(f'DATA.CROP_PCT must be in (0, 1], got {config.DATA.CROP_PCT}')
    validate_image_size(config, config.DATA.IMAGE_SIZE)
    _validate_data(config.DATA)
    _validate_aug(config.AUG)


def _validate_choice(section, node, key, choices):
    if node[key] not in choices:
        raise ConfigError(f'{section}.{key} is {node[key]!r}; choose one of {", ".join(choices)}')


def _validate_data(data):
    """Raise ConfigError naming the DATA key whose value cannot work."""
    _validate_choice('DATA', data, 'DATASET', DATASETS)
    _validate_choice('DATA', data, 'INTERPOLATION', INTERPOLATIONS)
    _validate_choice('DATA', data, 'RESIZE_MODE', RESIZE_MODES)
    for key in ('BATCH_SIZE', 'BATCH_SIZE_EVAL'):
        if data[key] < 1:
            raise ConfigError(f'DATA.{key} must be positive, got {data[key]}')
    if data.NUM_WORKERS < 0:
        raise ConfigError(f'DATA.NUM_WORKERS must be 0 or more, got {data.NUM_WORKERS}')
    for key in ('IMAGENET_MEAN', 'IMAGENET_STD'):
        values = data[key]
        if len(values) != 3 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f'DATA.{key} must be three numbers (R, G, B), got {list(values)}')
    if min(data.IMAGENET_STD) <= 0:
        raise ConfigError(f'DATA.IMAGENET_STD must be positive, got {list(data.IMAGENET_STD)}')


def _validate_aug(aug):
    """Raise ConfigError naming the AUG key whose value cannot work."""
    _validate_choice('AUG', aug, 'RECIPE', AUG_RECIPES)
    _validate_choice('AUG', aug, 'AUTO_AUGMENT', AUTO_AUGMENTS)
    if not 0 <= aug.RAND_MAGNITUDE <= 10:
        raise ConfigError(f'AUG.RAND_MAGNITUDE must be in [0, 10], got {aug.RAND_MAGNITUDE}')
    if aug.RAND_LAYERS < 0:
        raise ConfigError(f'AUG.RAND_LAYERS must be 0 or more, got {aug.RAND_LAYERS}')
    for key in ('COLOR_JITTER', 'MIXUP', 'CUTMIX'):
        if aug[key] < 0:
            raise ConfigError(f'AUG.{key} must be 0 or more, got {aug[key]}')
    for key in ('RE_PROB', 'MIXUP_PROB', 'MIXUP_SWITCH_PROB'):
        if not 0 <= aug[key] <= 1:
            raise ConfigError(f'AUG.{key} must be a probability in [0, 1], got {aug[key]}')
    if not 0 <= aug.SMOOTHING < 1:
        raise ConfigError(f'AUG.SMOOTHING must be in [0, 1), got {aug.SMOOTHING}')


def validate_image_size(config, image_size):
    """Raise ConfigError unless every stage's feature map at `image_size` splits into whole partitions."""
    model = config.MODEL
    for stage, (channels, h, w, sharesets) in enumerate(
            zip(model.CHANNELS, model.HEIGHTS, model.WIDTHS, model.SHARESETS_NUMS)):
        if channels % sharesets:
            raise ConfigError(f'MODEL.CHANNELS[{stage}]={channels} is not divisible by '
                              f'MODEL.SHARESETS_NUMS[{stage}]={sharesets}')
        stride = PATCH_SIZE * 2 ** stage
        side = image_size // stride
        if image_size % stride or side % h or side % w:
            raise ConfigError(
                f'DATA.IMAGE_SIZE={image_size} gives stage {stage} a {image_size / stride:g}x{image_size / stride:g} '
                f'map, which does not split into MODEL.HEIGHTS[{stage}] x MODEL.WIDTHS[{stage}] = {h}x{w} '
                f'partitions; use a multiple of {_smallest_valid_size(model)}')


def _smallest_valid_size(model):
    """The smallest input side whose maps split into whole partitions at every stage."""
    size = 1
    for stage, (h, w) in enumerate(zip(model.HEIGHTS, model.WIDTHS)):
        stride = PATCH_SIZE * 2 ** stage
        for part in (h, w):
            size = math.lcm(size, part * stride)
    return size


def _merge_yaml_file(config, cfg_file, seen):
    """Merge `cfg_file` into `config`, its BASE files first; errors name the file and the key."""
    if not os.path.isfile(cfg_file):
        raise ConfigError(f'config file not found: {cfg_file}')
    if os.path.abspath(cfg_file) in seen:
        raise ConfigError(f'{cfg_file}: BASE files include each other in a loop')
    try:
        with open(cfg_file, 'r', encoding='utf-8') as f:
            content = yaml.safe_load(f) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f' line {mark.line + 1}' if mark is not None else ''
        problem = getattr(err, 'problem', None) or str(err).splitlines()[0]
        raise ConfigError(f'{cfg_file}{where}: yaml syntax error: {problem}') from None
    if not isinstance(content, dict):
        raise ConfigError(f'{cfg_file}: expected a mapping of config keys at the top level')
    bases = content.pop('BASE', None) or []
    if isinstance(bases, str):
        bases = [bases]
    for base in bases:
        if base:
            base_path = os.path.join(os.path.dirname(cfg_file), base)
            if not os.path.isfile(base_path):
                raise ConfigError(f'{cfg_file}: BASE file not found: {base_path}')
            _merge_yaml_file(config, base_path, seen + (os.path.abspath(cfg_file),))
    _merge_dict(config, content, prefix='', source=cfg_file)


def _merge_dict(config, values, prefix, source):
    for name, value in values.items():
        key = prefix + str(name)
        if isinstance(value, dict):
            node = _lookup(config, key, source)
            if not isinstance(node, CN):
                raise ConfigError(f'{source}: {key} is a single value, not a section')
            _merge_dict(config, value, key + '.', source)
        else:
            _set_key(config, key, value, source)


def _lookup(config, key, source):
    node = config
    for part in key.split('.'):
        if not isinstance(node, CN) or part not in node:
            raise ConfigError(f'{source}: unknown config key {key}')
        node = node[part]
    return node


def _set_key(config, key, value, source):
    """Set `key` (dotted) to `value` after checking that the key exists and the type fits its default."""
    old = _lookup(config, key, source)
    if isinstance(old, CN):
        raise ConfigError(f'{source}: {key} is a section; set its keys instead')
    parent_key, _, leaf = key.rpartition('.')
    parent = _lookup(config, parent_key, source) if parent_key else config
    parent[leaf] = _coerce(value, old, key, source)


def _coerce(value, old, key, source):
    """Return `value` converted to the type of the default `old`, or raise ConfigError."""
    if old is None or value is None:
        return value
    if isinstance(old, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(old, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(old, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(old, str):
        if isinstance(value, str):
            return value
    elif isinstance(old, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return list(value)
    raise ConfigError(f'{source}: {key} expects {type(old).__name__} (like {old!r}), got {value!r}')


def _parse_literal(text):
    """'3' -> 3, '[1, 3]' -> [1, 3], 'True' -> True; anything else stays a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
