"""Image transforms for RepMLPNet: eval resizing, the two training recipes, normalisation, Mixup/CutMix.

Every per-image transform takes a PIL image in RGB mode and returns a uint8 numpy array [3, H, W] (CHW, RGB,
not normalised). Normalisation happens on the device, once per batch, in `normalize`: the DataLoader then
moves a quarter of the bytes through its workers' shared memory and the workers do no per-pixel float work.

- Eval: resize (the shorter side to floor(IMAGE_SIZE / CROP_PCT), or squash to that square) with PIL's
  antialiased filter, then center-crop IMAGE_SIZE. This is how PaddleViT and the official test script
  prepared the images that the published accuracies were measured on.
- Train, recipe 'paddlevit' (PaddleViT's DeiT-style transforms): RandomResizedCrop (bicubic), horizontal flip,
  then RandAugment (rand-m9-mstd0.5-inc1, 2 layers), AutoAugment (the paper's ImageNet policy) or ColorJitter,
  then random erasing (pixel mode).
- Train, recipe 'raug15' (the official RepMLPNet training): RandomResizedCrop (bilinear), flip, then two
  operations drawn from sixteen, each at a magnitude drawn from 0-14 on the 0-10 scale, fill grey 128
  (Cutout paints CUTOUT_FILL).
- Both recipes crop with AUG.CROP_SCALE and AUG.CROP_RATIO (torchvision's 0.08-1 and 3/4-4/3 by default) and
  flip with probability AUG.FLIP_PROB (0.5).
- Mixup/CutMix: on device batches, one mixing per batch, label smoothing in the soft targets.
"""

import math
import random

import numpy as np
import paddle
import paddle.nn.functional as F
from PIL import Image, ImageEnhance, ImageOps

PIL_FILTERS = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
               'lanczos': Image.LANCZOS}
FILL = (128, 128, 128)  # the grey that geometric operations leave where the image moved away
CUTOUT_FILL = (125, 122, 113)  # the colour the official cutout.py paints (its geometric operations fill 128)
LEVEL_DENOM = 10  # magnitudes are on a 0-10 scale, as in the AutoAugment and RandAugment papers
RAUG15_MAGNITUDES = 15  # 'raug15' draws each operation's magnitude from range(15)
RAUG15_LAYERS = 2  # 'raug15' applies two operations per image
RAND_PROB = 0.5  # PaddleViT's RandAugment applies each drawn operation with this probability
MAGNITUDE_STD = 0.5  # PaddleViT jitters every RandAugment/AutoAugment magnitude with this Gaussian std
ERASE_AREA = (0.02, 1 / 3)  # random erasing: range of the box area, as a fraction of the image
ERASE_LOG_RATIO = (math.log(0.3), math.log(1 / 0.3))  # random erasing: range of log(aspect ratio)


def to_chw(image):
    """PIL RGB image -> contiguous uint8 array [3, H, W]."""
    return np.ascontiguousarray(np.asarray(image).transpose(2, 0, 1))


def eval_resize_size(image_size, crop_pct):
    """The side that eval resizes to before the center crop: floor(image_size / crop_pct)."""
    return int(math.floor(image_size / crop_pct))


class EvalTransform:
    """Resize (shorter side, or squash to a square) with a PIL filter, then center-crop; returns CHW uint8."""

    def __init__(self, image_size, crop_pct, interpolation='bilinear', resize_mode='shorter'):
        self.image_size = image_size
        self.resize_size = eval_resize_size(image_size, crop_pct)
        self.resample = PIL_FILTERS[interpolation]
        self.resize_mode = resize_mode

    def resized_size(self, width, height):
        """(width, height) after the resize step; the shorter side rounds like torchvision's Resize(int)."""
        size = self.resize_size
        if self.resize_mode == 'square':
            return size, size
        if width <= height:
            return size, int(size * height / width)
        return int(size * width / height), size

    def __call__(self, image):
        width, height = self.resized_size(*image.size)
        if (width, height) != image.size:
            # The whole image is resized and then cropped (not resized from the crop box), so that the
            # result is bit-exact with the reference pipelines: PIL's box path rounds its filter
            # weights differently and moves about 0.1% of pixels by one grey level.
            image = image.resize((width, height), self.resample)
        side = self.image_size
        left = int(round((width - side) / 2.0))
        top = int(round((height - side) / 2.0))
        array = np.asarray(image)[top:top + side, left:left + side]
        return np.ascontiguousarray(array.transpose(2, 0, 1))


def random_resized_crop_box(width, height, scale, ratio):
    """A random (left, top, right, bottom) box with area in `scale` and aspect in `ratio` (Inception crop).

    Ten tries at a random box, then the largest centered box whose aspect ratio is within `ratio`.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = random.randint(0, width - w)
            top = random.randint(0, height - h)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def random_resized_crop(image, size, resample, scale, ratio):
    """Crop a random box (see `random_resized_crop_box`) and resize it to size x size in one PIL call.

    Resizing straight from the box skips a copy of the crop; the filter may read the few pixels just
    outside the box instead of repeating its edge, which only matters as much as the box's random position.
    """
    box = random_resized_crop_box(*image.size, scale, ratio)
    return image.resize((size, size), resample, box=box)


def random_flip(image, prob):
    """Mirror left-right with probability `prob`."""
    return image.transpose(Image.FLIP_LEFT_RIGHT) if random.random() < prob else image


# ---- operations of AutoAugment / RandAugment: each is op(image, argument, resample) -> image ----

def _affine(image, matrix, resample):
    return image.transform(image.size, Image.AFFINE, matrix, resample=resample, fillcolor=FILL)


def shear_x(image, factor, resample):
    """Shear along x by `factor` (pixels of x per pixel of y), grey fill."""
    return _affine(image, (1, factor, 0, 0, 1, 0), resample)


def shear_y(image, factor, resample):
    """Shear along y by `factor`, grey fill."""
    return _affine(image, (1, 0, 0, factor, 1, 0), resample)


def translate_x(image, pixels, resample):
    """Shift by `pixels` along x (content moves left for positive values), grey fill."""
    return _affine(image, (1, 0, pixels, 0, 1, 0), resample)


def translate_y(image, pixels, resample):
    """Shift by `pixels` along y, grey fill."""
    return _affine(image, (1, 0, 0, 0, 1, pixels), resample)


def translate_x_rel(image, fraction, resample):
    """Shift along x by `fraction` of the width, grey fill."""
    return translate_x(image, fraction * image.size[0], resample)


def translate_y_rel(image, fraction, resample):
    """Shift along y by `fraction` of the height, grey fill."""
    return translate_y(image, fraction * image.size[1], resample)


def rotate_black(image, degrees, resample):
    """Rotate counter-clockwise by `degrees` about the center, black corners (PaddleViT's Rotate)."""
    return image.rotate(degrees, resample=resample)


def rotate_grey(image, degrees, resample):
    """Rotate counter-clockwise by `degrees` about the center, grey corners (the official Rotate)."""
    return image.rotate(degrees, resample=resample, fillcolor=FILL)


def auto_contrast(image, _, __):
    """Stretch each channel to the full 0-255 range."""
    return ImageOps.autocontrast(image)


def equalize(image, _, __):
    """Equalize each channel's histogram."""
    return ImageOps.equalize(image)


def invert(image, _, __):
    """255 - pixel."""
    return ImageOps.invert(image)


def solarize(image, threshold, _):
    """Invert the pixels at or above `threshold` (256 or more: no change)."""
    return ImageOps.solarize(image, threshold)


def solarize_add(image, add, _):
    """Add `add` (clipped at 255) to the pixels below 128."""
    lut = [min(255, i + add) if i < 128 else i for i in range(256)] * 3
    return image.point(lut)


def posterize(image, bits, _):
    """Keep the `bits` most significant bits of each channel (8 or more: no change; 0: black)."""
    if bits >= 8:
        return image
    # A lookup table rather than ImageOps.posterize, which refuses 0 bits since Pillow 10.
    mask = 0xFF & ~(2 ** (8 - bits) - 1)
    return image.point([i & mask for i in range(256)] * 3)


def enhance_color(image, factor, _):
    """Saturation: 0 grey, 1 unchanged."""
    return ImageEnhance.Color(image).enhance(factor)


def enhance_contrast(image, factor, _):
    """Contrast: 0 flat mean grey, 1 unchanged."""
    return ImageEnhance.Contrast(image).enhance(factor)


def enhance_brightness(image, factor, _):
    """Brightness: 0 black, 1 unchanged."""
    return ImageEnhance.Brightness(image).enhance(factor)


def enhance_sharpness(image, factor, _):
    """Sharpness: 0 smoothed, 1 unchanged, 2 sharpened."""
    return ImageEnhance.Sharpness(image).enhance(factor)


def cutout(image, side, _):
    """Paint a CUTOUT_FILL square of `side` pixels centred at a uniform random point (clipped at the borders)."""
    width, height = image.size
    cx, cy = random.randrange(width), random.randrange(height)
    half = int(side) // 2
    box = (max(0, cx - half), max(0, cy - half), min(width, cx + half), min(height, cy + half))
    image = image.copy()
    image.paste(CUTOUT_FILL, box)
    return image


# ---- magnitude (0-10 scale, may exceed 10 in 'raug15') -> operation argument ----

def _signed(value):
    return -value if random.random() < 0.5 else value


def level_none(_):
    """Operations without an argument."""
    return None


def level_shear(level):
    """+-0.3 at level 10."""
    return _signed(level / LEVEL_DENOM * 0.3)


def level_rotate(level):
    """+-30 degrees at level 10."""
    return _signed(level / LEVEL_DENOM * 30.0)


def level_translate_100px(level):
    """+-100 pixels at level 10 (PaddleViT's absolute translation)."""
    return _signed(level / LEVEL_DENOM * 100.0)


def level_translate_rel(level):
    """+-45% of the side at level 10."""
    return _signed(level / LEVEL_DENOM * 0.45)


def level_enhance(level):
    """0.1 at level 0 to 1.9 at level 10: the strength falls and rises again through 1 (no change)."""
    return level / LEVEL_DENOM * 1.8 + 0.1


def level_enhance_increasing(level):
    """1 +- 0.9 at level 10 (at least 0.1): stronger with the level."""
    return max(0.1, 1.0 + _signed(level / LEVEL_DENOM * 0.9))


def level_solarize(level):
    """Threshold 0 (invert all) at level 0 to 256 (no change) at level 10."""
    return int(level / LEVEL_DENOM * 256)


def level_solarize_increasing(level):
    """Threshold 256 (no change) at level 0 to 0 (invert all) at level 10."""
    return 256 - int(level / LEVEL_DENOM * 256)


def level_solarize_add(level):
    """0 to 110 added at level 10."""
    return int(level / LEVEL_DENOM * 110)


def level_posterize_original(level):
    """4 to 8 bits kept (the AutoAugment paper)."""
    return int(level / LEVEL_DENOM * 4) + 4


def level_posterize_increasing(level):
    """4 bits kept at level 0 to 0 at level 10."""
    return 4 - int(level / LEVEL_DENOM * 4)


def level_posterize_tpu(level):
    """0 bits kept at level 0 to 4 at level 10 (TPU EfficientNet's variant, used by 'raug15')."""
    return int(level / LEVEL_DENOM * 4)


def level_cutout(level):
    """Side 2 to 40 pixels at level 10."""
    return max(2.0, level / LEVEL_DENOM * 40.0)


# PaddleViT's RandAugment 'rand-m9-mstd0.5-inc1': nearest-neighbour resampling, black rotation corners.
PADDLEVIT_RAND_OPS = {
    'AutoContrast': (auto_contrast, level_none),
    'Equalize': (equalize, level_none),
    'Invert': (invert, level_none),
    'Rotate': (rotate_black, level_rotate),
    'PosterizeIncreasing': (posterize, level_posterize_increasing),
    'SolarizeIncreasing': (solarize, level_solarize_increasing),
    'SolarizeAdd': (solarize_add, level_solarize_add),
    'ColorIncreasing': (enhance_color, level_enhance_increasing),
    'ContrastIncreasing': (enhance_contrast, level_enhance_increasing),
    'BrightnessIncreasing': (enhance_brightness, level_enhance_increasing),
    'SharpnessIncreasing': (enhance_sharpness, level_enhance_increasing),
    'ShearX': (shear_x, level_shear),
    'ShearY': (shear_y, level_shear),
    'TranslateX': (translate_x, level_translate_100px),
    'TranslateY': (translate_y, level_translate_100px),
}

# Operations of the AutoAugment paper's ImageNet policy, as PaddleViT runs them.
PADDLEVIT_AUTO_OPS = {
    'AutoContrast': (auto_contrast, level_none),
    'Equalize': (equalize, level_none),
    'Invert': (invert, level_none),
    'Rotate': (rotate_black, level_rotate),
    'Posterize': (posterize, level_posterize_original),
    'Solarize': (solarize, level_solarize),
    'Color': (enhance_color, level_enhance),
    'Contrast': (enhance_contrast, level_enhance),
    'Sharpness': (enhance_sharpness, level_enhance),
    'ShearX': (shear_x, level_shear),
}

# The AutoAugment paper's ImageNet policy: 25 sub-policies of two (operation, probability, magnitude).
AUTO_AUGMENT_POLICY = (
    (('Posterize', 0.4, 8), ('Rotate', 0.6, 9)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)), (('Posterize', 0.6, 7), ('Posterize', 0.6, 6)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Equalize', 0.4, 4), ('Rotate', 0.8, 8)),
    (('Solarize', 0.6, 3), ('Equalize', 0.6, 7)), (('Posterize', 0.8, 5), ('Equalize', 1.0, 2)),
    (('Rotate', 0.2, 3), ('Solarize', 0.6, 8)), (('Equalize', 0.6, 8), ('Posterize', 0.4, 6)),
    (('Rotate', 0.8, 8), ('Color', 0.4, 0)), (('Rotate', 0.4, 9), ('Equalize', 0.6, 2)),
    (('Equalize', 0.0, 7), ('Equalize', 0.8, 8)), (('Invert', 0.6, 4), ('Equalize', 1.0, 8)),
    (('Color', 0.6, 4), ('Contrast', 1.0, 8)), (('Rotate', 0.8, 8), ('Color', 1.0, 2)),
    (('Color', 0.8, 8), ('Solarize', 0.8, 7)), (('Sharpness', 0.4, 7), ('Invert', 0.6, 8)),
    (('ShearX', 0.6, 5), ('Equalize', 1.0, 9)), (('Color', 0.4, 0), ('Equalize', 0.6, 3)),
    (('Equalize', 0.4, 7), ('Solarize', 0.2, 4)), (('Solarize', 0.6, 5), ('AutoContrast', 0.6, 5)),
    (('Invert', 0.6, 4), ('Equalize', 1.0, 8)), (('Color', 0.6, 4), ('Contrast', 1.0, 8)),
    (('Equalize', 0.8, 8), ('Equalize', 0.6, 3)),
)

# The official 'raug15' operations: bilinear or bicubic resampling at random, grey fill everywhere.
RAUG15_OPS = {
    'AutoContrast': (auto_contrast, level_none),
    'Equalize': (equalize, level_none),
    'Invert': (invert, level_none),
    'Rotate': (rotate_grey, level_rotate),
    'PosterizeTpu': (posterize, level_posterize_tpu),
    'Solarize': (solarize, level_solarize),
    'SolarizeAdd': (solarize_add, level_solarize_add),
    'Color': (enhance_color, level_enhance),
    'Contrast': (enhance_contrast, level_enhance),
    'Brightness': (enhance_brightness, level_enhance),
    'Sharpness': (enhance_sharpness, level_enhance),
    'ShearX': (shear_x, level_shear),
    'ShearY': (shear_y, level_shear),
    'TranslateXRel': (translate_x_rel, level_translate_rel),
    'TranslateYRel': (translate_y_rel, level_translate_rel),
    'Cutout': (cutout, level_cutout),
}


def _jittered_magnitude(magnitude):
    """PaddleViT's magnitude: Gaussian around `magnitude` with std 0.5, clipped to [0, 10]."""
    return min(LEVEL_DENOM, max(0.0, random.gauss(magnitude, MAGNITUDE_STD)))


def apply_op(ops, name, image, level, resample=Image.NEAREST):
    """Run operation `name` of the table `ops` at magnitude `level`."""
    op, level_to_arg = ops[name]
    return op(image, level_to_arg(level), resample)


class RandAugment:
    """PaddleViT's RandAugment: `num_layers` operations drawn with replacement, each applied with p=0.5."""

    def __init__(self, magnitude=9, num_layers=2):
        self.magnitude = magnitude
        self.num_layers = num_layers
        self.names = list(PADDLEVIT_RAND_OPS)

    def __call__(self, image):
        for _ in range(self.num_layers):
            name = random.choice(self.names)
            if random.random() < RAND_PROB:
                image = apply_op(PADDLEVIT_RAND_OPS, name, image, _jittered_magnitude(self.magnitude))
        return image


class AutoAugment:
    """The AutoAugment ImageNet policy: one random sub-policy, each operation with its own probability."""

    def __call__(self, image):
        for name, prob, magnitude in random.choice(AUTO_AUGMENT_POLICY):
            if random.random() < prob:
                image = apply_op(PADDLEVIT_AUTO_OPS, name, image, _jittered_magnitude(magnitude))
        return image


class ColorJitter:
    """Brightness, contrast and saturation factors drawn from [1 - s, 1 + s], applied in random order."""

    def __init__(self, strength):
        self.strength = strength
        self.enhancers = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]

    def __call__(self, image):
        for enhancer in random.sample(self.enhancers, len(self.enhancers)):
            image = enhancer(image).enhance(random.uniform(1 - self.strength, 1 + self.strength))
        return image


class Raug15:
    """The official 'raug15': two operations of sixteen, each always applied at a magnitude from range(15)."""

    def __init__(self):
        self.names = list(RAUG15_OPS)

    def __call__(self, image):
        for _ in range(RAUG15_LAYERS):
            name = random.choice(self.names)
            resample = random.choice((Image.BILINEAR, Image.BICUBIC))
            image = apply_op(RAUG15_OPS, name, image, random.randrange(RAUG15_MAGNITUDES), resample)
        return image


class RandomErasing:
    """With probability `prob`, replace a random box of a CHW uint8 image by per-pixel Gaussian noise.

    PaddleViT erases after normalisation with N(0, 1) noise; before normalisation that noise is
    mean + std * N(0, 1) on the 0-1 scale, here rounded to uint8 (values beyond 0-255 are clipped,
    about 2% of them).
    """

    def __init__(self, prob, mean, std):
        self.prob = prob
        self.mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1) * 255
        self.std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1) * 255

    def __call__(self, chw):
        if random.random() >= self.prob:
            return chw
        _, height, width = chw.shape
        for _ in range(10):
            area = height * width * random.uniform(*ERASE_AREA)
            aspect = math.exp(random.uniform(*ERASE_LOG_RATIO))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if h < height and w < width:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                noise = np.random.standard_normal((3, h, w)).astype(np.float32) * self.std + self.mean
                chw[:, top:top + h, left:left + w] = np.clip(np.rint(noise), 0, 255).astype(np.uint8)
                break
        return chw


class TrainTransform:
    """Random resized crop (AUG.CROP_SCALE, AUG.CROP_RATIO), flip (AUG.FLIP_PROB), then the recipe's PIL
    augmentation; CHW uint8, then optional erasing."""

    def __init__(self, image_size, resample, aug, augment=None, erasing=None):
        self.image_size = image_size
        self.resample = resample
        self.crop_scale, self.crop_ratio = tuple(aug.CROP_SCALE), tuple(aug.CROP_RATIO)
        self.flip_prob = aug.FLIP_PROB
        self.augment = augment
        self.erasing = erasing

    def __call__(self, image):
        image = random_resized_crop(image, self.image_size, self.resample, self.crop_scale, self.crop_ratio)
        image = random_flip(image, self.flip_prob)
        if self.augment is not None:
            image = self.augment(image)
        chw = to_chw(image)
        return self.erasing(chw) if self.erasing is not None else chw


def _paddlevit_augment(aug):
    if aug.AUTO_AUGMENT == 'rand':
        return RandAugment(aug.RAND_MAGNITUDE, aug.RAND_LAYERS)
    if aug.AUTO_AUGMENT == 'auto':
        return AutoAugment()
    return ColorJitter(aug.COLOR_JITTER) if aug.COLOR_JITTER > 0 else None


def build_transform(config, is_train):
    """The per-image transform of `config`: PIL RGB image -> uint8 numpy array [3, IMAGE_SIZE, IMAGE_SIZE]."""
    data, aug = config.DATA, config.AUG
    if not is_train:
        return EvalTransform(data.IMAGE_SIZE, data.CROP_PCT, data.INTERPOLATION, data.RESIZE_MODE)
    if aug.RECIPE == 'raug15':
        return TrainTransform(data.IMAGE_SIZE, Image.BILINEAR, aug, Raug15())
    erasing = RandomErasing(aug.RE_PROB, data.IMAGENET_MEAN, data.IMAGENET_STD) if aug.RE_PROB > 0 else None
    return TrainTransform(data.IMAGE_SIZE, Image.BICUBIC, aug, _paddlevit_augment(aug), erasing)


def normalize(images, config):
    """uint8 images [N, 3, H, W] (a paddle tensor) -> float32 (x / 255 - mean) / std on the same device.

    Computed on the view [N, 3, H*W] with [3, 1] operands: Paddle's CPU kernels broadcast [1, 3, 1, 1] about
    6x slower (a batch of 8 at 224: 7.6 ms against 1.3 ms).
    """
    channels, height, width = images.shape[1:]
    mean = paddle.to_tensor(config.DATA.IMAGENET_MEAN, dtype='float32').reshape([channels, 1]) * 255
    std = paddle.to_tensor(config.DATA.IMAGENET_STD, dtype='float32').reshape([channels, 1]) * 255
    flat = images.astype('float32').reshape([-1, channels, height * width])  # [N, 3, H, W] -> [N, 3, H*W]
    return ((flat - mean) / std).reshape([-1, channels, height, width])


def reversed_batch(x):
    """x [N, ...] with its batch in reverse order, as x.flip(0), which is 40x slower on the CPU (8 images of 224x224:
    4.0 ms against 0.09 ms)."""
    return paddle.index_select(x, paddle.arange(x.shape[0] - 1, -1, -1))


class Mixup:
    """Mixup or CutMix of a whole batch with its reverse; returns the mixed images and soft targets.

    With probability `prob` the batch is mixed; then CutMix with probability `switch_prob` when both are on.
    The mixing weight lam comes from Beta(alpha, alpha); CutMix pastes a box of area about 1 - lam and lam
    is corrected to the box's clipped area. Targets are lam * smooth(y) + (1 - lam) * smooth(y reversed),
    where smooth puts 1 - smoothing + smoothing / C on the label and smoothing / C elsewhere.
    """

    def __init__(self, mixup_alpha, cutmix_alpha, prob, switch_prob, smoothing, num_classes):
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.smoothing = smoothing
        self.num_classes = num_classes

    def _draw(self):
        """(lam, use_cutmix) for one batch."""
        if random.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.mixup_alpha <= 0 or (self.cutmix_alpha > 0 and random.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(np.random.beta(alpha, alpha)), use_cutmix

    def soft_targets(self, labels, lam):
        """Smoothed one-hot labels mixed with those of the reversed batch: [N, num_classes] float32."""
        off = self.smoothing / self.num_classes
        one_hot = F.one_hot(labels.reshape([-1]).astype('int64'), self.num_classes)
        smooth = one_hot * (1.0 - self.smoothing) + off
        return smooth * lam + reversed_batch(smooth) * (1.0 - lam)

    def __call__(self, images, labels):
        lam, use_cutmix = self._draw()
        if lam < 1.0:
            if use_cutmix:
                images, lam = self._cutmix(images, lam)
            else:
                images = images * lam + reversed_batch(images) * (1.0 - lam)
        return images, self.soft_targets(labels, lam)

    @staticmethod
    def _cutmix(images, lam):
        """Paste a random box of the reversed batch; returns the images and lam corrected to the box."""
        height, width = images.shape[2], images.shape[3]
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = random.randrange(height), random.randrange(width)
        top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
        left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
        if bottom <= top or right <= left:
            return images, 1.0
        # a select with a box mask: writing the box into a copy is 8x slower on the CPU (5.6 against 0.7 ms)
        box = paddle.zeros([1, 1, height, width], dtype='bool')
        box[:, :, top:bottom, left:right] = True
        mixed = paddle.where(box, reversed_batch(images), images)
        return mixed, 1.0 - (bottom - top) * (right - left) / (height * width)


def build_mixup(config):
    """The Mixup/CutMix of `config.AUG`, or None when both alphas are 0 (Mixup and CutMix off)."""
    aug = config.AUG
    if aug.MIXUP <= 0 and aug.CUTMIX <= 0:
        return None
    return Mixup(aug.MIXUP, aug.CUTMIX, aug.MIXUP_PROB, aug.MIXUP_SWITCH_PROB, aug.SMOOTHING,
                 config.MODEL.NUM_CLASSES)
