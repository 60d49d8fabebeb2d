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


_C = CN()  # `BASE:` in a yaml file is not a key: the files it names are merged first (_merge_yaml_file)

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
_C.AUG.CROP_SCALE = [0.08, 1.0]  # RandomResizedCrop: range of the crop's area, as a fraction of the image's
_C.AUG.CROP_RATIO = [0.75, 1.3333333333333333]  # RandomResizedCrop: range of the crop's aspect (width / height)
_C.AUG.FLIP_PROB = 0.5  # probability of a left-right mirror; 0 for digits, text and other images with a handedness
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
_C.MODEL.OFFICIAL_PARTITION_ORDER = False  # True: merge partitions back as the official code does (see README)

# Training and evaluation runs (main_single_gpu.py, main_multi_gpu.py); recipes in configs/recipes/.
_C.MODEL.PRETRAINED = ''  # weights (.pdparams, or a checkpoint) loaded strictly before training or evaluation
_C.MODEL.RESUME = ''  # checkpoint to continue training from; 'auto': the newest checkpoint in SAVE, if any
_C.MODEL.FINETUNE = False  # load PRETRAINED except the classifier head.* (kept freshly initialised) (flag -finetune)
_C.MODEL.NEW_SCHEDULE = False  # RESUME with other schedule keys than the checkpoint's (flag -new_schedule)
_C.TRAIN = CN()
_C.TRAIN.NUM_EPOCHS = 300  # length of the run and of the LR schedule
_C.TRAIN.LAST_EPOCH = 0  # epochs already done by the PRETRAINED weights: training and the LR schedule start there
_C.TRAIN.WARMUP_EPOCHS = 20  # linear warmup from WARMUP_START_LR to BASE_LR, then cosine down to END_LR
_C.TRAIN.LR_SCHEDULE = 'paddlevit'  # the cosine: 'paddlevit' over the steps after warmup, 'official' over all (README)
_C.TRAIN.BASE_LR = 1e-3  # peak LR for a global batch of LR_REFERENCE_BATCH; scaled linearly with the real one
_C.TRAIN.WARMUP_START_LR = 1e-6  # LR of the first step, scaled like BASE_LR
_C.TRAIN.END_LR = 1e-5  # LR that the cosine reaches at the last step, scaled like BASE_LR
_C.TRAIN.LR_REFERENCE_BATCH = 512  # global batch (per-process batch x processes x ACCUM_ITER) BASE_LR is for
_C.TRAIN.WEIGHT_DECAY = 0.1  # AdamW's decoupled weight decay; BN parameters and biases are never decayed
_C.TRAIN.GRAD_CLIP = 0.0  # largest global norm of the gradients; 0 turns clipping off
_C.TRAIN.ACCUM_ITER = 1  # batches whose gradients are summed before each optimizer step
_C.TRAIN.FREEZE_STAGES = 0  # fine-tuning: the stem and this many leading stages get no updates, their BNs stay in eval
_C.TRAIN.BACKBONE_LR_SCALE = 1.0  # fine-tuning: LR of every trained parameter but head.* = this x the scheduled LR
_C.TRAIN.OPTIMIZER = CN()
_C.TRAIN.OPTIMIZER.EPS = 1e-8  # AdamW's epsilon
_C.TRAIN.OPTIMIZER.BETAS = [0.9, 0.999]  # AdamW's moment decay rates
_C.TRAIN.MODEL_EMA = False  # keep an exponential moving average of the weights; evaluated and saved
_C.TRAIN.MODEL_EMA_DECAY = 0.99996  # weight of the old average at each optimizer step
_C.AMP = False  # mixed precision in training and evaluation (flag -amp); no effect on a CPU
_C.AMP_DTYPE = 'float16'  # 'float16' (with a dynamic loss scaler) or 'bfloat16' (no scaler needed)
_C.AMP_LEVEL = 'O1'  # 'O1': listed ops in AMP_DTYPE; 'O2': the model in AMP_DTYPE with float32 master weights
_C.SAVE = './output'  # folder of the run: log.txt, checkpoints, the resolved config, metrics.json (flag -output)
_C.SEED = 0  # seeds the weights' initialisation and, with the epoch and rank, every epoch's random draws
_C.EVAL = False  # only evaluate MODEL.PRETRAINED on the validation set (flag -eval)
_C.REPORT_FREQ = 20  # iterations between progress lines
_C.VALIDATE_FREQ = 1  # epochs between evaluations during training; the last epoch is always evaluated
_C.SAVE_FREQ = 1  # epochs between checkpoints; the last epoch is always saved
_C.KEEP_LAST = 3  # epoch checkpoints kept in SAVE (older ones are deleted); best.pdparams is kept apart
_C.DIST_TIMEOUT = 600  # seconds an NCCL collective waits for the other ranks before the job stops (gloo: 30, fixed)

MODEL_TYPES = ('RepMLP', 'RepMLPNet')
PATCH_SIZE = 4  # stride of the stem; each later stage halves the map again
STAGE_LIST_KEYS = ('CHANNELS', 'HEIGHTS', 'WIDTHS', 'NUM_BLOCKS', 'SHARESETS_NUMS')
DATASETS = ('imagenet2012', 'demo')
INTERPOLATIONS = ('bilinear', 'bicubic', 'lanczos', 'nearest')
RESIZE_MODES = ('shorter', 'square')
AUG_RECIPES = ('paddlevit', 'raug15')
LR_SCHEDULES = ('paddlevit', 'official')
AUTO_AUGMENTS = ('rand', 'auto', 'none')
AMP_DTYPES = ('float16', 'bfloat16')
AMP_LEVELS = ('O1', 'O2')

# PaddleViT's command-line flags and the config key each one sets.
FLAG_TO_KEY = {
    'image_size': 'DATA.IMAGE_SIZE',
    'dataset': 'DATA.DATASET',
    'data_path': 'DATA.DATA_PATH',
    'batch_size': 'DATA.BATCH_SIZE',
    'batch_size_eval': 'DATA.BATCH_SIZE_EVAL',
    'output': 'SAVE',
    'accum_iter': 'TRAIN.ACCUM_ITER',
    'pretrained': 'MODEL.PRETRAINED',
    'resume': 'MODEL.RESUME',
    'last_epoch': 'TRAIN.LAST_EPOCH',
    'eval': 'EVAL',
    'amp': 'AMP',
    'finetune': 'MODEL.FINETUNE',
    'new_schedule': 'MODEL.NEW_SCHEDULE',
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

    `args.cfg` (one file or a list, merged in order) is merged first, then each flag that was given, then
    `args.opts` (KEY VALUE pairs, values parsed as Python literals when they are ones).
    """
    config.defrost()
    cfg_files = getattr(args, 'cfg', None) or []
    for cfg_file in [cfg_files] if isinstance(cfg_files, str) else cfg_files:
        _merge_yaml_file(config, cfg_file, seen=())
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
    parser.add_argument('-cfg', type=str, nargs='+', default=None, metavar='YAML',
                        help='yaml config files merged in order, e.g. configs/repmlp_b_224.yaml '
                             'configs/recipes/official.yaml')
    parser.add_argument('-image_size', type=int, default=None, help='input side in pixels (DATA.IMAGE_SIZE)')
    parser.add_argument('-dataset', type=str, default=None, choices=DATASETS, help='DATA.DATASET')
    parser.add_argument('-data_path', type=str, default=None, help='folder with the list files (DATA.DATA_PATH)')
    parser.add_argument('-batch_size', type=int, default=None, help='training batch per process (DATA.BATCH_SIZE)')
    parser.add_argument('-batch_size_eval', type=int, default=None,
                        help='evaluation batch per process (DATA.BATCH_SIZE_EVAL)')
    parser.add_argument('-output', type=str, default=None, help='folder for logs, checkpoints, metrics (SAVE)')
    parser.add_argument('-accum_iter', type=int, default=None, help='batches per optimizer step (TRAIN.ACCUM_ITER)')
    parser.add_argument('-pretrained', type=str, default=None, help='weights to start from (MODEL.PRETRAINED)')
    parser.add_argument('-resume', type=str, default=None,
                        help="checkpoint to continue, or 'auto' for the newest in the output folder (MODEL.RESUME)")
    parser.add_argument('-last_epoch', type=int, default=None,
                        help='epochs the -pretrained weights have done (TRAIN.LAST_EPOCH)')
    parser.add_argument('-eval', action='store_true', help='only evaluate -pretrained (EVAL)')
    parser.add_argument('-amp', action='store_true', help='mixed precision, see AMP_DTYPE and AMP_LEVEL (AMP)')
    parser.add_argument('-finetune', action='store_true',
                        help='load -pretrained except the classifier head, for another NUM_CLASSES (MODEL.FINETUNE)')
    parser.add_argument('-new_schedule', action='store_true',
                        help='-resume with other epochs, warmup, LR or batch than the checkpoint was trained with '
                             '(MODEL.NEW_SCHEDULE)')
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
    _validate_run(config)


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
    for key in ('CROP_SCALE', 'CROP_RATIO'):
        low_high = list(aug[key])
        if len(low_high) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in low_high) \
                or not 0 < low_high[0] <= low_high[1]:
            raise ConfigError(f'AUG.{key} must be two numbers 0 < low <= high, got {low_high}')
    if aug.CROP_SCALE[1] > 1:
        raise ConfigError(f'AUG.CROP_SCALE must be fractions of the image in (0, 1], got {list(aug.CROP_SCALE)}')
    if not 0 <= aug.FLIP_PROB <= 1:
        raise ConfigError(f'AUG.FLIP_PROB must be a probability in [0, 1], got {aug.FLIP_PROB}')
    if not 0 <= aug.SMOOTHING < 1:
        raise ConfigError(f'AUG.SMOOTHING must be in [0, 1), got {aug.SMOOTHING}')


def _validate_run(config):
    """Raise ConfigError naming the TRAIN, AMP or run key whose value cannot work."""
    train = config.TRAIN
    positive = {'TRAIN.NUM_EPOCHS': train.NUM_EPOCHS, 'TRAIN.ACCUM_ITER': train.ACCUM_ITER,
                'TRAIN.LR_REFERENCE_BATCH': train.LR_REFERENCE_BATCH, 'REPORT_FREQ': config.REPORT_FREQ,
                'VALIDATE_FREQ': config.VALIDATE_FREQ, 'SAVE_FREQ': config.SAVE_FREQ, 'KEEP_LAST': config.KEEP_LAST,
                'DIST_TIMEOUT': config.DIST_TIMEOUT}
    for key, value in positive.items():
        if value < 1:
            raise ConfigError(f'{key} must be positive, got {value}')
    not_negative = {'TRAIN.BASE_LR': train.BASE_LR, 'TRAIN.WARMUP_START_LR': train.WARMUP_START_LR,
                    'TRAIN.END_LR': train.END_LR, 'TRAIN.WEIGHT_DECAY': train.WEIGHT_DECAY,
                    'TRAIN.GRAD_CLIP': train.GRAD_CLIP, 'TRAIN.WARMUP_EPOCHS': train.WARMUP_EPOCHS}
    for key, value in not_negative.items():
        if value < 0:
            raise ConfigError(f'{key} must be 0 or more, got {value}')
    _validate_choice('TRAIN', train, 'LR_SCHEDULE', LR_SCHEDULES)
    if train.WARMUP_EPOCHS > train.NUM_EPOCHS:
        raise ConfigError(f'TRAIN.WARMUP_EPOCHS={train.WARMUP_EPOCHS} is more than TRAIN.NUM_EPOCHS={train.NUM_EPOCHS}')
    if not 0 <= train.LAST_EPOCH < train.NUM_EPOCHS:
        raise ConfigError(f'TRAIN.LAST_EPOCH (-last_epoch) must be in [0, TRAIN.NUM_EPOCHS={train.NUM_EPOCHS}), '
                          f'got {train.LAST_EPOCH}')
    if not 0 <= train.MODEL_EMA_DECAY < 1:
        raise ConfigError(f'TRAIN.MODEL_EMA_DECAY must be in [0, 1), got {train.MODEL_EMA_DECAY}')
    if len(train.OPTIMIZER.BETAS) != 2 or not all(0 <= b < 1 for b in train.OPTIMIZER.BETAS):
        raise ConfigError(f'TRAIN.OPTIMIZER.BETAS must be two numbers in [0, 1), got {list(train.OPTIMIZER.BETAS)}')
    if config.AMP_DTYPE not in AMP_DTYPES:
        raise ConfigError(f'AMP_DTYPE is {config.AMP_DTYPE!r}; choose one of {", ".join(AMP_DTYPES)}')
    if config.AMP_LEVEL not in AMP_LEVELS:
        raise ConfigError(f'AMP_LEVEL is {config.AMP_LEVEL!r}; choose one of {", ".join(AMP_LEVELS)}')
    if config.EVAL and not config.MODEL.PRETRAINED:
        raise ConfigError('-eval needs the weights to evaluate: add -pretrained FILE.pdparams')
    _validate_transfer(config)


def _validate_transfer(config):
    """Raise ConfigError naming the fine-tuning key or flag whose value cannot work."""
    if config.MODEL.FINETUNE and not config.MODEL.PRETRAINED:
        raise ConfigError('-finetune (MODEL.FINETUNE) needs the weights to start from: add -pretrained FILE.pdparams')
    if config.MODEL.FINETUNE and config.EVAL:
        raise ConfigError('-finetune trains a new classifier and cannot be combined with -eval; evaluate the '
                          'fine-tuned weights (e.g. OUT/best.pdparams) with -eval -pretrained instead')
    num_stages = len(config.MODEL.NUM_BLOCKS)
    if not 0 <= config.TRAIN.FREEZE_STAGES <= num_stages:
        raise ConfigError(f'TRAIN.FREEZE_STAGES must be in [0, {num_stages}] (the number of stages), '
                          f'got {config.TRAIN.FREEZE_STAGES}')
    if config.TRAIN.BACKBONE_LR_SCALE < 0:
        raise ConfigError(f'TRAIN.BACKBONE_LR_SCALE must be 0 or more, got {config.TRAIN.BACKBONE_LR_SCALE}')


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
