"""Write a small 5-class folder dataset (train/<class>/*.jpg, val/<class>/*.jpg) of generated shapes.

    python tools/make_shapes_dataset.py data/shapes5 [-train_per_class 20] [-val_per_class 40] [-any_colour]

It stands in for "your own images" in the README's fine-tuning example: the layout is the one that
tools/make_list_files.py turns into list files, and the classes (star, hexagon, ellipse, arrow, frame) are
none of the demo data's. As in the demo data, each class also has its own range of hues (between the demo
classes' hues), because the README's 32-pixel demo model does not learn these shapes from colour-free images
of this number (`-any_colour`: every shape in a random colour; see the README). Deterministic: the same
arguments write the same images.
"""

import argparse
import math
import os
import sys

import numpy as np

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
from config import UserError
from datasets import photo_like_image, random_placement, vivid_colour
from utils import run_cli

CLASSES = ('star', 'hexagon', 'ellipse', 'arrow', 'frame')
SIDE = 80  # pixels, as the demo data
SEED = 20240509


def outline(name, radius, angle, rng):
    """The corners of shape `name` around (0, 0), `radius` in size, turned by `angle`: [(x, y)]."""
    if name == 'star':
        points = [(radius * (1.0 if k % 2 == 0 else 0.42), math.pi * k / 5) for k in range(10)]
    elif name == 'hexagon':
        points = [(radius, math.pi * k / 3) for k in range(6)]
    elif name == 'ellipse':
        ratio = rng.uniform(0.35, 0.55)
        points = [(radius * ratio / math.hypot(ratio * math.cos(t), math.sin(t)), t)
                  for t in np.linspace(0, 2 * math.pi, 40, endpoint=False)]
    elif name == 'arrow':  # a shaft and a head, pointing along angle 0
        corners = [(-1.0, -0.18), (0.15, -0.18), (0.15, -0.5), (1.0, 0.0), (0.15, 0.5), (0.15, 0.18), (-1.0, 0.18)]
        points = [(radius * math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:  # frame: the corners of a square, drawn as an outline
        points = [(radius, math.pi / 4 + math.pi * k / 2) for k in range(4)]
    return [(r * math.cos(t + angle), r * math.sin(t + angle)) for r, t in points]


def shape_image(label, rng, any_colour=False):
    """A SIDE x SIDE photo-like RGB image (see datasets.photo_like_image) of class `label`: one shape whose hue is
    near the class's own (or, with `any_colour`, any colour)."""
    return photo_like_image(rng, (SIDE, SIDE), lambda draw, rng: draw_shape(draw, label, rng, any_colour))


def draw_shape(draw, label, rng, any_colour):
    """Paint the shape of class `label` at a random place, size, rotation and colour."""
    radius, cx, cy, angle = random_placement(rng, SIDE, (0.22, 0.38))
    corners = [(cx + x, cy + y) for x, y in outline(CLASSES[label], radius, angle, rng)]
    # Between the demo classes' hues, so that each class here has its own colour too.
    colour = vivid_colour(rng, None if any_colour else (label + 0.5) / len(CLASSES))
    if CLASSES[label] == 'frame':
        draw.line(corners + corners[:1], fill=colour, width=max(2, int(radius / 4)), joint='curve')
    else:
        draw.polygon(corners, fill=colour)


def write_shapes_dataset(root, train_per_class, val_per_class, any_colour=False):
    """Write root/{train,val}/<class>/<class>_NNNN.jpg; returns {split: number of images}."""
    written = {}
    for split, per_class in (('train', train_per_class), ('val', val_per_class)):
        for label, name in enumerate(CLASSES):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for index in range(per_class):
                rng = np.random.default_rng([SEED, split == 'train', label, index])
                shape_image(label, rng, any_colour).save(os.path.join(folder, f'{name}_{index:04d}.jpg'), quality=90)
        written[split] = per_class * len(CLASSES)
    return written


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='folder to write train/<class>/ and val/<class>/ into')
    parser.add_argument('-train_per_class', type=int, default=20, help='training images per class')
    parser.add_argument('-val_per_class', type=int, default=40, help='validation images per class')
    parser.add_argument('-any_colour', action='store_true', help='shapes in any colour, not in their class\'s hues')
    args = parser.parse_args(argv)
    if args.train_per_class < 1 or args.val_per_class < 1:
        raise UserError('-train_per_class and -val_per_class must be positive')
    written = write_shapes_dataset(args.root, args.train_per_class, args.val_per_class, args.any_colour)
    for split, count in written.items():
        print(f'{os.path.join(args.root, split)}: {count} images in {len(CLASSES)} class folders')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
