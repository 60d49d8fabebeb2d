"""Top-k classes of images, from weights (dygraph) or from an export folder (Paddle Inference).

    python tools/predict.py -cfg configs/repmlp_b_224.yaml -pretrained repmlp_b_224.pdparams -images cat.jpg dog.png
    python tools/predict.py -model_dir export/b224 -topk 3 -json -images cat.jpg

The images are the words after `-images` (up to the next flag); the flags may come in any order. Images are
prepared exactly as in evaluation (transforms.build_transform(config, is_train=False), then
transforms.normalize). With `-model_dir` (written by tools/export.py) the config is the `config.yaml` saved
there. Class names come from a `classes.txt` (one name per line, in label order) in the export folder or in
DATA.DATA_PATH; otherwise the demo data's shapes, or for 1000 classes tools/imagenet_synsets.txt (ImageNet's
standard order); otherwise they are `class N`. A missing file, a file that is not an image, a word that belongs
to no flag, or weights that do not match the config is one line and exit code 2.
"""

import json
import os
import sys

import numpy as np
from PIL import Image

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)
import paddle

import transforms
from config import UserError, build_arg_parser, get_config, update_config
from datasets import CLASS_NAMES_FILE, DEMO_CLASSES, load_rgb, read_class_names
from inference import create_predictor, dataset_folder, load_model, predictor_run, run_model
from utils import run_cli

IMAGENET_SYNSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_synsets.txt')
CONFIG_EXTENSIONS = ('.yaml', '.yml')


def imagenet_class_names():
    """The 1000 ImageNet-1k class names in label order: the first WordNet lemma of each synset ('tench', ...)."""
    with open(IMAGENET_SYNSETS, encoding='utf-8') as file:
        rows = [line.rstrip('\n').split('\t', 1) for line in file if line.strip() and not line.startswith('#')]
    return [names.split(',')[0].strip() for _, names in rows]


def class_names(config, folders):
    """Names of the model's classes: classes.txt in the first of `folders` that has one, else ImageNet's
    (1000 classes), else 'class N'."""
    num_classes = config.MODEL.NUM_CLASSES
    for folder in folders:
        names = read_class_names(folder) if folder else None
        if names is not None:
            if len(names) != num_classes:
                raise UserError(f'{os.path.join(folder, CLASS_NAMES_FILE)} names {len(names)} classes but the model '
                                f'has MODEL.NUM_CLASSES={num_classes}')
            return names
    if config.DATA.DATASET == 'demo' and num_classes == len(DEMO_CLASSES):
        return list(DEMO_CLASSES)
    if num_classes == 1000:
        return imagenet_class_names()
    return [f'class {label}' for label in range(num_classes)]


def load_images(config, paths):
    """The eval-transformed images as uint8 [N, 3, IMAGE_SIZE, IMAGE_SIZE]; UserError naming a bad file."""
    transform = transforms.build_transform(config, is_train=False)
    arrays = []
    for path in paths:
        if not os.path.isfile(path):
            raise UserError(f'image not found: {path}')
        try:
            image = load_rgb(path)
        except Image.UnidentifiedImageError:
            raise UserError(f'{path} is not an image (PIL does not recognise its format)') from None
        except (OSError, Image.DecompressionBombError, SyntaxError, ValueError) as err:
            raise UserError(f'{path}: the image cannot be read ({type(err).__name__}: {err})') from None
        arrays.append(transform(image))
    return np.stack(arrays)


def softmax(logits):
    """Row-wise softmax in float64."""
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def top_classes(probabilities, names, k):
    """For each row, the `k` most probable classes as dicts (label, name, probability), most probable first."""
    k = min(k, probabilities.shape[1])
    results = []
    for row in probabilities:
        order = np.argsort(-row, kind='stable')[:k]
        results.append([{'label': int(label), 'name': names[label], 'probability': float(row[label])}
                        for label in order])
    return results


def normalized(images, config):
    """The uint8 `images` [N, 3, H, W] normalised as the model was trained on them, as float32 numpy."""
    return transforms.normalize(paddle.to_tensor(images), config).numpy()


def build_runner(args):
    """(config, a function uint8 images -> logits, folders to look for classes.txt in) for the chosen model."""
    if args.model_dir:
        config_path = os.path.join(args.model_dir, 'config.yaml')
        if not os.path.isfile(config_path):
            raise UserError(f'{args.model_dir} has no config.yaml: is it a folder written by tools/export.py?')
        config = get_config(config_path)
        predictor = create_predictor(args.model_dir)

        def run(images):
            return predictor_run(predictor, normalized(images, config))
        return config, run, [args.model_dir, dataset_folder(config)]
    config = update_config(get_config(), args)
    model, _ = load_model(config, config.MODEL.PRETRAINED)

    def run(images):
        return run_model(model, normalized(images, config))
    return config, run, [dataset_folder(config)]


def predict(args):
    """[{'image': path, 'top': [{label, name, probability}, ...]}, ...] for the images of `args`."""
    if bool(args.model_dir) == bool(args.pretrained):
        raise UserError('give either -model_dir EXPORT_DIR or -cfg CFG -pretrained WEIGHTS')
    if not args.images:
        raise UserError('give the image files to classify with -images FILE [FILE ...]')
    if args.topk < 1:
        raise UserError(f'-topk must be positive, got {args.topk}')
    if args.model_dir and not os.path.isdir(args.model_dir):
        raise UserError(f'-model_dir: folder not found: {args.model_dir}')
    if args.pretrained and not os.path.isfile(args.pretrained):
        raise UserError(f'weights file not found: {args.pretrained}')
    for path in args.images:  # before the model is loaded, which takes seconds
        if not os.path.isfile(path):
            raise UserError(f'image not found: {path}')
    config, run, folders = build_runner(args)
    names = class_names(config, folders)
    batch = config.DATA.BATCH_SIZE_EVAL
    results = []
    for first in range(0, len(args.images), batch):
        paths = args.images[first:first + batch]
        probabilities = softmax(run(load_images(config, paths)))
        results += [{'image': path, 'top': top} for path, top in
                    zip(paths, top_classes(probabilities, names, args.topk))]
    return results


def parse_args(argv=None):
    """The flags of `argv`; UserError for a word that belongs to no flag or an image given to -cfg (images go after
    -images)."""
    parser = build_arg_parser('Top-k classes of images with a RepMLPNet (weights or an export folder).')
    parser.add_argument('-images', nargs='+', default=None, metavar='IMAGE', help='image files to classify')
    parser.add_argument('-model_dir', default=None, help='a folder written by tools/export.py (instead of -pretrained)')
    parser.add_argument('-topk', type=int, default=5, help='classes shown per image')
    parser.add_argument('-json', action='store_true', help='print one JSON document instead of text')
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        raise UserError(f'{unknown[0]!r} belongs to no flag: give the images after -images (-images A.jpg B.jpg), '
                        'see --help')
    for name in args.cfg or []:  # the words after -cfg up to the next flag
        if not name.lower().endswith(CONFIG_EXTENSIONS):
            raise UserError(f'-cfg {name}: not a .yaml config file; give the images after -images')
    return args


def main(argv=None):
    """Command-line entry: returns the exit code."""
    args = parse_args(argv)
    results = predict(args)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(result['image'])
        for entry in result['top']:
            print(f'  {entry["probability"]:.4f}  {entry["label"]:>4}  {entry["name"]}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
