"""Write train_list.txt and val_list.txt for an ImageNet-style folder tree.

    python tools/make_list_files.py ROOT

ROOT holds train/<class>/<image> and val/<class>/<image>. Labels are the indices of the class folders of
train/ in sorted order, which for ImageNet's synset folders (n01440764, ...) is the standard label order
that the released weights use. Each line is `split/class/file label`, relative to ROOT. ROOT/classes.txt gets
the class folder names, one a line in label order (line i is label i), for programs that print class names.
"""

import argparse
import os
import sys

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
from config import UserError
from utils import run_cli

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.webp', '.tif', '.tiff', '.gif', '.ppm', '.pgm')
SPLITS = (('train', 'train_list.txt'), ('val', 'val_list.txt'))
CLASS_NAMES_FILE = 'classes.txt'  # the same name as datasets.CLASS_NAMES_FILE, which reads it


class ListFileError(UserError):
    """A folder tree that cannot be turned into list files."""


def class_folders(split_dir):
    """Sorted names of the sub-folders of `split_dir`."""
    if not os.path.isdir(split_dir):
        raise ListFileError(f'{split_dir}: folder not found; ROOT must hold train/<class>/ and val/<class>/')
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    if not classes:
        raise ListFileError(f'{split_dir}: no class folders inside')
    return classes


def list_lines(root, split, labels):
    """['split/class/file label\\n'] for every image under root/split, classes and files sorted."""
    lines = []
    for name in class_folders(os.path.join(root, split)):
        if name not in labels:
            raise ListFileError(f'{os.path.join(root, split, name)}: class folder missing from train/')
        folder = os.path.join(root, split, name)
        for file_name in sorted(os.listdir(folder)):
            if file_name.lower().endswith(IMAGE_EXTENSIONS):
                lines.append(f'{split}/{name}/{file_name} {labels[name]}\n')
    if not lines:
        raise ListFileError(f'{os.path.join(root, split)}: no images found')
    return lines


def make_list_files(root, force=False):
    """Write root/train_list.txt, root/val_list.txt and root/classes.txt; return {file: images (or classes)}.

    Files already there with other contents are kept (ListFileError naming them) unless `force`: lists in
    another label order would silently change what every trained model's outputs mean.
    """
    names = class_folders(os.path.join(root, 'train'))
    labels = {name: index for index, name in enumerate(names)}
    outputs = {os.path.join(root, list_name): list_lines(root, split, labels) for split, list_name in SPLITS}
    outputs[os.path.join(root, CLASS_NAMES_FILE)] = [name + '\n' for name in names]
    differing = [path for path, lines in outputs.items() if os.path.isfile(path) and _read(path) != ''.join(lines)]
    if differing and not force:
        raise ListFileError(f'{", ".join(differing)} already exist(s) with other contents (e.g. another label '
                            'order, which would change what a trained model\'s outputs mean); keeping them. Add '
                            '-force to replace them')
    for path, lines in outputs.items():
        with open(path, 'w', encoding='utf-8') as f:
            f.writelines(lines)
    return {path: len(lines) for path, lines in outputs.items()}


def _read(path):
    with open(path, encoding='utf-8-sig', newline=None) as f:
        return f.read()


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='folder holding train/<class>/ and val/<class>/')
    parser.add_argument('-force', action='store_true', help='replace existing list files whose contents differ')
    args = parser.parse_args(argv)
    written = make_list_files(args.root, args.force)
    for path, count in written.items():
        print(f'{path}: {count} {"classes" if path.endswith(CLASS_NAMES_FILE) else "images"}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
