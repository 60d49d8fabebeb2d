"""transforms.py: eval resizing against a PIL reference on real photos, both training recipes on every image
mode, every augmentation operation against PIL or a numpy formula at several magnitudes and both signs,
normalisation, random erasing, Mixup/CutMix pixels and soft targets worked out from the batch."""

import io
import math
import os
import random

import numpy as np
import paddle
import pytest
from PIL import Image, ImageEnhance, ImageOps

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


def op_test_image():
    """160x120, non-square, every channel non-uniform and short of the full 0-255 range (so that autocontrast and
    equalize have something to do), values on both sides of 128 (solarize and its add)."""
    y, x = np.mgrid[0:120, 0:160]
    noise = np.random.default_rng(5).integers(30, 220, (120, 160))
    return Image.fromarray(np.stack([20 + x + y // 2, 210 - y + (x % 9) * 4, noise], axis=-1).astype(np.uint8))


GREY, BLACK = (128, 128, 128), (0, 0, 0)


def affine(image, matrix, resample, fill=GREY):
    """PIL's affine transform: output pixel (x, y) samples the input at (a x + b y + c, d x + e y + f)."""
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)


def rotated(image, degrees, resample, fill):
    """Counter-clockwise rotation about the image centre, as an affine map worked out here, not Image.rotate."""
    width, height = image.size
    cos, sin = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    cx, cy = width / 2, height / 2
    return affine(image, (cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy), resample, fill)


def channel_lut(image, function):
    """`function` applied to every uint8 value (numpy, int arithmetic)."""
    values = np.asarray(image).astype(np.int64)
    return Image.fromarray(np.clip(function(values), 0, 255).astype(np.uint8))


def posterized(image, bits):
    return channel_lut(image, lambda v: v & (0xFF << (8 - bits)) & 0xFF)


def solarized(image, threshold):
    return channel_lut(image, lambda v: np.where(v >= threshold, 255 - v, v))


# Each operation as specified, as (signed, reference(image, level, sign, resample)) with the reference from PIL or a
# numpy formula; `sign` (+1 or -1) is the random sign that a signed operation draws. The level -> argument maps are
# the docstrings' (e.g. shear +-0.3 at level 10), written out here.
def increasing_factor(level, sign):
    return max(0.1, 1.0 + sign * level / 10 * 0.9)


COMMON_REFERENCES = {
    'AutoContrast': (False, lambda im, lv, s, rs: ImageOps.autocontrast(im)),
    'Equalize': (False, lambda im, lv, s, rs: ImageOps.equalize(im)),
    'Invert': (False, lambda im, lv, s, rs: channel_lut(im, lambda v: 255 - v)),
    'ShearX': (True, lambda im, lv, s, rs: affine(im, (1, s * lv / 10 * 0.3, 0, 0, 1, 0), rs)),
    'ShearY': (True, lambda im, lv, s, rs: affine(im, (1, 0, 0, s * lv / 10 * 0.3, 1, 0), rs)),
}
PADDLEVIT_RAND_REFERENCES = {
    **COMMON_REFERENCES,
    'Rotate': (True, lambda im, lv, s, rs: rotated(im, s * lv / 10 * 30, rs, BLACK)),
    'PosterizeIncreasing': (False, lambda im, lv, s, rs: posterized(im, 4 - int(lv / 10 * 4))),
    'SolarizeIncreasing': (False, lambda im, lv, s, rs: solarized(im, 256 - int(lv / 10 * 256))),
    'SolarizeAdd': (False, lambda im, lv, s, rs: channel_lut(
        im, lambda v: np.where(v < 128, np.minimum(v + int(lv / 10 * 110), 255), v))),
    'ColorIncreasing': (True, lambda im, lv, s, rs: ImageEnhance.Color(im).enhance(increasing_factor(lv, s))),
    'ContrastIncreasing': (True, lambda im, lv, s, rs: ImageEnhance.Contrast(im).enhance(increasing_factor(lv, s))),
    'BrightnessIncreasing': (True, lambda im, lv, s, rs: ImageEnhance.Brightness(im).enhance(
        increasing_factor(lv, s))),
    'SharpnessIncreasing': (True, lambda im, lv, s, rs: ImageEnhance.Sharpness(im).enhance(
        increasing_factor(lv, s))),
    'TranslateX': (True, lambda im, lv, s, rs: affine(im, (1, 0, s * lv / 10 * 100, 0, 1, 0), rs)),
    'TranslateY': (True, lambda im, lv, s, rs: affine(im, (1, 0, 0, 0, 1, s * lv / 10 * 100), rs)),
}
AUTO_AND_RAUG15_REFERENCES = {
    **COMMON_REFERENCES,
    'Solarize': (False, lambda im, lv, s, rs: solarized(im, int(lv / 10 * 256))),
    'Color': (False, lambda im, lv, s, rs: ImageEnhance.Color(im).enhance(lv / 10 * 1.8 + 0.1)),
    'Contrast': (False, lambda im, lv, s, rs: ImageEnhance.Contrast(im).enhance(lv / 10 * 1.8 + 0.1)),
    'Sharpness': (False, lambda im, lv, s, rs: ImageEnhance.Sharpness(im).enhance(lv / 10 * 1.8 + 0.1)),
}
PADDLEVIT_AUTO_REFERENCES = {
    **AUTO_AND_RAUG15_REFERENCES,
    'Rotate': PADDLEVIT_RAND_REFERENCES['Rotate'],
    'Posterize': (False, lambda im, lv, s, rs: posterized(im, int(lv / 10 * 4) + 4)),
}
RAUG15_REFERENCES = {
    **AUTO_AND_RAUG15_REFERENCES,
    'Rotate': (True, lambda im, lv, s, rs: rotated(im, s * lv / 10 * 30, rs, GREY)),
    'PosterizeTpu': (False, lambda im, lv, s, rs: posterized(im, int(lv / 10 * 4))),
    'SolarizeAdd': PADDLEVIT_RAND_REFERENCES['SolarizeAdd'],
    'Brightness': (False, lambda im, lv, s, rs: ImageEnhance.Brightness(im).enhance(lv / 10 * 1.8 + 0.1)),
    'TranslateXRel': (True, lambda im, lv, s, rs: affine(im, (1, 0, s * lv / 10 * 0.45 * im.size[0], 0, 1, 0), rs)),
    'TranslateYRel': (True, lambda im, lv, s, rs: affine(im, (1, 0, 0, 0, 1, s * lv / 10 * 0.45 * im.size[1]), rs)),
}
PADDLEVIT_LEVELS = (0, 1, 4.6, 10)  # off, low, a jittered middle (PaddleViT's magnitudes are floats), max
RAUG15_LEVELS = (0, 1, 7, 14)  # 'raug15' goes past 10, to 14
MIDDLE_LEVELS = (4.6, 7)  # where every operation changes the test image
OP_TABLES = {  # table: (its references, levels, resampling filters the recipe uses)
    'rand': (transforms.PADDLEVIT_RAND_OPS, PADDLEVIT_RAND_REFERENCES, PADDLEVIT_LEVELS, (None,)),
    'auto': (transforms.PADDLEVIT_AUTO_OPS, PADDLEVIT_AUTO_REFERENCES, PADDLEVIT_LEVELS, (None,)),
    'raug15': (transforms.RAUG15_OPS, RAUG15_REFERENCES, RAUG15_LEVELS, (Image.BILINEAR, Image.BICUBIC)),
}
OP_CASES = [pytest.param(table, references, name, level, resample, id=f'{key}-{name}-{level}-{resample}')
            for key, (table, references, levels, filters) in OP_TABLES.items()
            for name in table if name != 'Cutout' for level in levels for resample in filters]


def test_every_operation_has_a_reference():
    for table, references, _, _ in OP_TABLES.values():
        assert set(table) - {'Cutout'} <= set(references)
    assert {name for sub_policy in transforms.AUTO_AUGMENT_POLICY for name, _, _ in sub_policy} <= set(
        transforms.PADDLEVIT_AUTO_OPS)


@pytest.mark.parametrize('table, references, name, level, resample', OP_CASES)
def test_operation_equals_its_reference(table, references, name, level, resample):
    """Pixel for pixel (uint8 equality); a signed operation gives one of its two signs' results, each about half
    of the time (None: apply_op's default, nearest, which RandAugment and AutoAugment use)."""
    image = op_test_image()
    signed, reference = references[name]
    rs = Image.NEAREST if resample is None else resample
    expected = {sign: np.asarray(reference(image, level, sign, rs)) for sign in ((1, -1) if signed else (1,))}
    if level in MIDDLE_LEVELS:
        assert not any(np.array_equal(pixels, np.asarray(image)) for pixels in expected.values())
    random.seed(11)
    seen = {sign: 0 for sign in expected}
    for _ in range(12 if signed else 1):
        extra = () if resample is None else (resample,)
        out = np.asarray(transforms.apply_op(table, name, image, level, *extra))
        assert out.dtype == np.uint8 and out.shape == (120, 160, 3)
        matches = [sign for sign, pixels in expected.items() if np.array_equal(out, pixels)]
        assert matches, f'{name} at level {level}: no match with the reference'
        for sign in matches:
            seen[sign] += 1
    if signed and not np.array_equal(expected[1], expected[-1]):
        assert min(seen.values()) >= 3, seen


@pytest.mark.parametrize('level', RAUG15_LEVELS)
def test_cutout_operation_paints_a_square_at_a_uniform_point(level):
    """Side max(2, level * 4) pixels around a centre drawn uniformly (x, then y), clipped at the borders."""
    image = op_test_image()
    for seed in range(5):
        random.seed(seed)
        cx, cy = random.randrange(160), random.randrange(120)
        half = int(max(2.0, level / 10 * 40.0)) // 2
        expected = np.asarray(image).copy()
        expected[max(0, cy - half):cy + half, max(0, cx - half):cx + half] = (125, 122, 113)
        random.seed(seed)
        out = transforms.apply_op(transforms.RAUG15_OPS, 'Cutout', image, level, Image.BILINEAR)
        np.testing.assert_array_equal(np.asarray(out), expected)


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


def smoothed_one_hot(labels, num_classes, smoothing):
    """[N, C]: smoothing / C everywhere, plus 1 - smoothing on the label."""
    targets = np.full((len(labels), num_classes), smoothing / num_classes)
    targets[np.arange(len(labels)), labels] += 1 - smoothing
    return targets


def check_mixed_batch(images, labels, mixed, targets, smoothing, num_classes):
    """('none' | 'mixup' | 'cutmix', lam) of one batch out of Mixup, worked out from the pixels alone; asserts that
    the pixels and the soft targets follow the formulas for that lam. The code pairs image i with image N-1-i
    (the batch reversed), so the partner of every image here is partner[i] = images[N-1-i]."""
    partner = images[::-1]
    height, width = images.shape[2:]
    pasted = np.all(mixed == partner, axis=1) & ~np.all(mixed == images, axis=1)  # [N, H, W]
    if np.array_equal(mixed, images):
        kind, lam = 'none', 1.0
    elif pasted.any():
        kind = 'cutmix'
        box = pasted[0]
        rows, cols = np.nonzero(box)
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert box.sum() == (bottom - top) * (right - left)  # one axis-aligned rectangle...
        assert all(np.array_equal(p, box) for p in pasted)  # ...the same for every image
        expected = images.copy()
        expected[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
        np.testing.assert_array_equal(mixed, expected)
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        kind = 'mixup'
        difference = images - partner
        lam = float(((mixed - partner) * difference).sum() / (difference * difference).sum())  # least squares
        np.testing.assert_allclose(mixed, lam * images + (1 - lam) * partner, rtol=0, atol=1e-5)
    smooth = smoothed_one_hot(labels, num_classes, smoothing)
    np.testing.assert_allclose(targets, lam * smooth + (1 - lam) * smooth[::-1], rtol=0, atol=1e-6)
    return kind, lam


def run_mixup(mixup, seed, shape=(4, 3, 12, 16), labels=(3, 1, 7, 0)):
    """A batch of random float images (no two pixels alike) through `mixup`: (images, labels, mixed, targets)."""
    images = np.random.default_rng(seed).random(shape, dtype=np.float32)
    mixed, targets = mixup(paddle.to_tensor(images), paddle.to_tensor(np.array(labels)))
    return images, np.array(labels), mixed.numpy(), targets.numpy()


def mixed_batches(mixup, count, smoothing=0.1):
    """(kind, lam) of `count` seeded batches, each checked by check_mixed_batch."""
    random.seed(0)
    np.random.seed(0)
    return [check_mixed_batch(*run_mixup(mixup, seed), smoothing, 10) for seed in range(count)]


def test_mixup_blends_whole_images_and_targets_with_one_lam():
    results = mixed_batches(transforms.build_mixup(mixup_config(0.8, 0.0)), 30)
    assert {kind for kind, _ in results} == {'mixup'}
    lams = np.array([lam for _, lam in results])
    assert np.all((lams > 0) & (lams < 1)) and lams.std() > 0.1  # Beta(0.8, 0.8): std 0.31
    assert 0.3 < lams.mean() < 0.7


def test_cutmix_pastes_a_box_and_lam_is_its_area():
    results = mixed_batches(transforms.build_mixup(mixup_config(0.0, 1.0)), 30)
    assert {kind for kind, _ in results} <= {'cutmix', 'none'}  # 'none': a box clipped to nothing
    lams = np.array([lam for kind, lam in results if kind == 'cutmix'])
    assert len(lams) >= 25 and np.all((lams > 0) & (lams < 1))


def test_cutmix_box_side_follows_the_drawn_lam():
    """The box is sqrt(1 - lam) of each side (lam the Beta draw, the only use of numpy's global generator), centred
    at a uniform point and clipped at the borders: unclipped, its sides are 2 * (int(side * sqrt(1 - lam)) // 2)."""
    mixup = transforms.build_mixup(mixup_config(0.0, 1.0))
    random.seed(1)
    boxes = 0
    for seed in range(20):
        np.random.seed(seed)
        drawn = np.random.beta(1.0, 1.0)
        np.random.seed(seed)
        images, labels, mixed, targets = run_mixup(mixup, seed)
        kind, _ = check_mixed_batch(images, labels, mixed, targets, 0.1, 10)
        if kind == 'none':
            continue
        boxes += 1
        rows, cols = np.nonzero(np.any(mixed[0] != images[0], axis=0))
        for low, high, side in ((rows.min(), rows.max() + 1, 12), (cols.min(), cols.max() + 1, 16)):
            full = 2 * (int(side * math.sqrt(1 - drawn)) // 2)
            assert high - low == full or (high - low < full and (low == 0 or high == side))
    assert boxes >= 15


def test_switch_between_mixup_and_cutmix_and_unmixed_batches():
    """Both on, switch probability 0.5: about half of the batches each; with MIXUP_PROB 0.5, about half unmixed."""
    kinds = [kind for kind, _ in mixed_batches(transforms.build_mixup(mixup_config(0.8, 1.0)), 60)]
    assert 18 <= kinds.count('mixup') <= 42 and 18 <= kinds.count('cutmix') + kinds.count('none') <= 42
    config = mixup_config(0.8, 1.0)
    config.AUG.MIXUP_PROB = 0.5
    kinds = [kind for kind, _ in mixed_batches(transforms.build_mixup(config), 60)]
    assert 18 <= kinds.count('none') <= 42 and kinds.count('mixup') >= 5 and kinds.count('cutmix') >= 5


def test_mixup_targets_without_smoothing_and_odd_batches():
    """Smoothing 0 gives plain mixed one-hots; in a batch of 5 the middle image is its own partner."""
    mixup = transforms.build_mixup(mixup_config(0.8, 0.0, smoothing=0.0))
    random.seed(2)
    np.random.seed(2)
    images, labels, mixed, targets = run_mixup(mixup, 0, shape=(5, 3, 4, 6), labels=(0, 1, 2, 3, 4))
    kind, lam = check_mixed_batch(images, labels, mixed, targets, 0.0, 10)
    assert kind == 'mixup'
    np.testing.assert_allclose(targets[0, [0, 4]], [lam, 1 - lam], rtol=0, atol=1e-6)
    np.testing.assert_allclose(mixed[2], images[2], rtol=0, atol=1e-6)
