"""transforms.py: eval resizing against a PIL reference on real photos, both training recipes on every image
mode, every augmentation operation at its extreme magnitudes, normalisation, random erasing, Mixup/CutMix."""

import io
import math
import os
import random

import numpy as np
import paddle
import pytest
from PIL import Image

import transforms
from config import get_config
from datasets import load_rgb

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'fixtures')
PHOTOS = [os.path.join(FIXTURES, name) for name in ('photo_chelsea.jpg', 'photo_coffee.jpg')]
FILTERS = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC}


def make_config(**data):
    config = get_config()
    config.defrost()
    for key, value in data.items():
        config.DATA[key] = value
    config.MODEL.NUM_CLASSES = 10
    return config


def reference_eval(image, image_size, crop_pct, interpolation, resize_mode):
    """The eval preprocessing spelled out with plain PIL calls: resize, center crop, HWC -> CHW."""
    side = math.floor(image_size / crop_pct)
    width, height = image.size
    if resize_mode == 'square':
        size = (side, side)
    elif width <= height:
        size = (side, int(side * height / width))
    else:
        size = (int(side * width / height), side)
    resized = image.resize(size, FILTERS[interpolation])
    left = int(round((size[0] - image_size) / 2.0))
    top = int(round((size[1] - image_size) / 2.0))
    cropped = resized.crop((left, top, left + image_size, top + image_size))
    return np.asarray(cropped).transpose(2, 0, 1)


@pytest.mark.parametrize('photo', PHOTOS)
@pytest.mark.parametrize('portrait', [False, True])
@pytest.mark.parametrize('image_size, crop_pct, interpolation, resize_mode', [
    (224, 0.875, 'bilinear', 'shorter'), (224, 0.875, 'bilinear', 'square'),
    (256, 0.875, 'bicubic', 'shorter'), (64, 0.9, 'bilinear', 'shorter')])
def test_eval_transform_equals_pil_reference(photo, portrait, image_size, crop_pct, interpolation, resize_mode):
    image = load_rgb(photo)
    if portrait:
        image = image.transpose(Image.ROTATE_90)
    config = make_config(IMAGE_SIZE=image_size, CROP_PCT=crop_pct, INTERPOLATION=interpolation,
                         RESIZE_MODE=resize_mode)
    out = transforms.build_transform(config, is_train=False)(image)
    assert out.dtype == np.uint8 and out.shape == (3, image_size, image_size) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, reference_eval(image, image_size, crop_pct, interpolation, resize_mode))


def test_eval_resize_size_is_floored():
    assert transforms.eval_resize_size(224, 0.875) == 256
    assert transforms.eval_resize_size(256, 0.875) == 292  # the official script's 256 * 256 // 224


def image_of_mode(mode, rng):
    """A 90x70 image of `mode`, round-tripped through a file format that keeps that mode."""
    rgb = Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8))
    if mode == 'I;16':
        image = Image.fromarray(rng.integers(0, 65536, (70, 90), dtype=np.uint16))
    elif mode == 'P-transparency':
        image = rgb.convert('P')
        image.info['transparency'] = 3
    else:
        image = rgb.convert(mode)
    fmt = 'JPEG' if mode in ('CMYK', 'L') else 'TIFF' if mode == 'I' else 'PNG'
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    buffer.seek(0)
    return buffer


MODES = ['RGB', 'L', '1', 'P', 'P-transparency', 'RGBA', 'LA', 'CMYK', 'I;16', 'I']


@pytest.mark.parametrize('mode', MODES)
@pytest.mark.parametrize('recipe, auto_augment', [('paddlevit', 'rand'), ('paddlevit', 'auto'),
                                                  ('paddlevit', 'none'), ('raug15', 'rand')])
def test_train_recipes_run_on_every_mode(tmp_path, mode, recipe, auto_augment):
    path = tmp_path / 'image'
    path.write_bytes(image_of_mode(mode, np.random.default_rng(0)).getvalue())
    config = make_config(IMAGE_SIZE=32)
    config.AUG.RECIPE, config.AUG.AUTO_AUGMENT, config.AUG.RE_PROB = recipe, auto_augment, 1.0
    transform = transforms.build_transform(config, is_train=True)
    image = load_rgb(str(path))
    assert image.mode == 'RGB'
    for _ in range(5):
        out = transform(image)
        assert out.dtype == np.uint8 and out.shape == (3, 32, 32)


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / 'grey16.png'
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(path)
    assert np.asarray(load_rgb(str(path)))[0, 0].tolist() == [128, 128, 128]


@pytest.mark.parametrize('table, levels', [(transforms.PADDLEVIT_RAND_OPS, (0, 10)),
                                           (transforms.PADDLEVIT_AUTO_OPS, (0, 10)),
                                           (transforms.RAUG15_OPS, (0, 14))])
def test_every_operation_at_extreme_magnitudes(table, levels):
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    for name in table:
        for level in levels:
            out = transforms.apply_op(table, name, image, level, Image.BICUBIC)
            assert out.mode == 'RGB' and out.size == image.size, name


def test_recipes_have_the_published_operations():
    assert len(transforms.RAUG15_OPS) == 16 and {'Invert', 'Cutout'} <= set(transforms.RAUG15_OPS)
    assert len(transforms.PADDLEVIT_RAND_OPS) == 15 and len(transforms.AUTO_AUGMENT_POLICY) == 25
    assert transforms.apply_op(transforms.RAUG15_OPS, 'PosterizeTpu', Image.new('RGB', (4, 4), 'white'),
                               0).getpixel((0, 0)) == (0, 0, 0)


def test_random_resized_crop_box_limits():
    random.seed(0)
    for _ in range(500):
        left, top, right, bottom = transforms.random_resized_crop_box(500, 375, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= left < right <= 500 and 0 <= top < bottom <= 375
        area = (right - left) * (bottom - top) / (500 * 375)
        assert 0.07 <= area <= 1.0


def train_transform_config(**aug):
    config = make_config(IMAGE_SIZE=32)
    for key, value in aug.items():
        config.AUG[key] = value
    return config


def test_crop_scale_and_ratio_keys_bound_every_box():
    """AUG.CROP_SCALE [0.5, 0.6] and CROP_RATIO [1, 1]: square boxes of 50-60% of the area (rounded to pixels)."""
    config = train_transform_config(CROP_SCALE=[0.5, 0.6], CROP_RATIO=[1.0, 1.0])
    transform = transforms.build_transform(config, is_train=True)
    random.seed(0)
    for _ in range(300):
        left, top, right, bottom = transforms.random_resized_crop_box(400, 300, transform.crop_scale,
                                                                      transform.crop_ratio)
        width, height = right - left, bottom - top
        assert abs(width - height) <= 1
        assert 0.5 - 0.01 <= width * height / (400 * 300) <= 0.6 + 0.01


@pytest.mark.parametrize('flip_prob, expected', [(0.0, 0), (1.0, 200), (0.5, 100)])
def test_flip_probability_key(flip_prob, expected):
    """A left-right ramp keeps its direction unless flipped; the crop is the whole image (scale and ratio 1)."""
    config = train_transform_config(RECIPE='paddlevit', AUTO_AUGMENT='none', COLOR_JITTER=0.0, RE_PROB=0.0,
                                    CROP_SCALE=[1.0, 1.0], CROP_RATIO=[1.0, 1.0], FLIP_PROB=flip_prob)
    transform = transforms.build_transform(config, is_train=True)
    ramp = np.tile(np.linspace(0, 255, 32).astype(np.uint8)[None, :, None], (32, 1, 3))
    random.seed(0)
    flipped = sum(int(transform(Image.fromarray(ramp))[0, 0, 0] > 128) for _ in range(200))
    assert abs(flipped - expected) <= 25


def test_cutout_paints_the_official_colour():
    """The official cutout.py paints (125, 122, 113) over a square of `side` pixels around a random centre."""
    image = Image.new('RGB', (64, 48), (0, 0, 0))
    random.seed(3)
    out = np.asarray(transforms.cutout(image, 20, None))
    painted = np.all(out == (125, 122, 113), axis=2)
    rows, cols = np.nonzero(painted)
    assert painted.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # one rectangle
    assert rows.max() - rows.min() + 1 <= 20 and cols.max() - cols.min() + 1 <= 20
    assert np.all(out[~painted] == 0)


def test_random_erasing_fills_a_box_with_noise_around_the_mean():
    random.seed(0)
    np.random.seed(0)
    erase = transforms.RandomErasing(1.0, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    chw = erase(np.zeros((3, 64, 64), dtype=np.uint8))
    erased = chw[:, chw.sum(0).sum(1) > 0]
    assert erased.size > 0
    assert abs(float(chw[0][chw[0] > 0].mean()) - 0.485 * 255) < 15


def test_normalize_matches_the_formula():
    config = make_config()
    images = np.random.default_rng(2).integers(0, 256, (2, 3, 5, 5), dtype=np.uint8)
    out = transforms.normalize(paddle.to_tensor(images), config)
    mean = np.array(config.DATA.IMAGENET_MEAN).reshape(1, 3, 1, 1)
    std = np.array(config.DATA.IMAGENET_STD).reshape(1, 3, 1, 1)
    assert out.dtype == paddle.float32
    np.testing.assert_allclose(out.numpy(), (images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def mixup_config(mixup, cutmix, smoothing=0.1):
    config = make_config()
    config.AUG.MIXUP, config.AUG.CUTMIX, config.AUG.SMOOTHING = mixup, cutmix, smoothing
    return config


def test_build_mixup_is_none_when_off():
    assert transforms.build_mixup(mixup_config(0.0, 0.0)) is None


def test_mixup_blends_images_and_targets():
    random.seed(3)
    np.random.seed(3)
    mixup = transforms.build_mixup(mixup_config(0.8, 0.0, smoothing=0.0))
    images = paddle.to_tensor(np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1) * np.ones((1, 3, 2, 2)),
                              dtype='float32')
    mixed, targets = mixup(images, paddle.to_tensor([0, 1, 2, 3]))
    lam = float(targets[0, 0])
    np.testing.assert_allclose(mixed.numpy()[0], lam * 0 + (1 - lam) * 3, rtol=1e-5)
    np.testing.assert_allclose(targets.numpy()[0, 3], 1 - lam, rtol=1e-5)
    np.testing.assert_allclose(targets.numpy().sum(1), 1, rtol=1e-5)


def test_cutmix_targets_match_the_pasted_area_and_smoothing():
    random.seed(4)
    np.random.seed(4)
    mixup = transforms.build_mixup(mixup_config(0.0, 1.0, smoothing=0.1))
    images = paddle.concat([paddle.zeros([1, 3, 16, 16]), paddle.ones([1, 3, 16, 16])])
    mixed, targets = mixup(images, paddle.to_tensor([0, 1]))
    pasted = float(mixed[0].mean())
    targets = targets.numpy()
    # target of the label = lam * (0.9 + 0.01) + (1 - lam) * 0.01, and 1 - lam is the pasted fraction
    np.testing.assert_allclose(targets[0, 1], pasted * 0.9 + 0.01, rtol=1e-5)
    np.testing.assert_allclose(targets[0, 5], 0.01, rtol=1e-5)
    np.testing.assert_allclose(targets.sum(1), 1, rtol=1e-5)
