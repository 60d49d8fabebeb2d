"""ImageNet-format list-file datasets, their samplers and loaders, and the generated demo data.

A dataset folder (DATA.DATA_PATH) holds `train_list.txt` and `val_list.txt`, one `relative/path label` per
line, and the images they name. `get_dataset(config, is_train)` reads it and returns items
`(image, label)`: image a uint8 numpy array [3, IMAGE_SIZE, IMAGE_SIZE] (CHW, RGB, not normalised), label
an int. `get_dataloader` batches them to uint8 [N, 3, S, S] and int64 [N] tensors; the training loop
normalises on the device with `transforms.normalize`.
"""

import colorsys
import logging
import math
import multiprocessing
import os
import shutil
import tempfile
import threading

import numpy as np
import runtime  # before paddle: CPU threads, MKL path, stop signals
import paddle
from paddle.io import BatchSampler, DataLoader, Dataset
from PIL import Image, ImageDraw, ImageFilter

from config import UserError
from transforms import build_transform

LIST_FILES = {True: 'train_list.txt', False: 'val_list.txt'}
DEFAULT_DEMO_PATH = os.path.join('.', 'data', 'demo')
WORKER_ERROR_BYTES = 4096  # room for a DatasetError message passed from a DataLoader worker
MAX_SKIPS_IN_A_ROW = 10  # with SKIP_BAD_IMAGES, this many unreadable images in a row means a broken dataset

logger = logging.getLogger(__name__)


class DatasetError(UserError):
    """A list file, a line of it or an image that cannot be used."""


def read_list_file(list_file, num_classes):
    """[(relative_path, label)] from a list file; DatasetError naming the file and line for a bad line."""
    if not os.path.isfile(list_file):
        raise DatasetError(f'{list_file}: list file not found; DATA.DATA_PATH must hold train_list.txt and '
                           'val_list.txt (tools/make_list_files.py writes them from train/<class>/ folders)')
    samples = [parse_list_line(list_file, line_number, line, num_classes)
               for line_number, line in list_file_lines(list_file)]
    if not samples:
        raise DatasetError(f'{list_file}: no images listed')
    return samples


def list_file_lines(list_file):
    """(line number, line) of every non-blank line of a text file as editors and tools write them: a UTF-8
    byte-order mark (Windows editors), CRLF line ends and trailing blank lines are all accepted."""
    with open(list_file, 'r', encoding='utf-8-sig') as f:
        for line_number, line in enumerate(f, start=1):
            if line.strip():
                yield line_number, line


def parse_list_line(list_file, line_number, line, num_classes):
    """(relative_path, label) of one list line; DatasetError naming the file and line if it is bad."""
    # The path is everything before the last field (spaces or tabs between), so that paths with spaces still work.
    fields = line.strip().rsplit(maxsplit=1)
    where = f'{list_file} line {line_number}'
    if len(fields) != 2:
        raise DatasetError(f'{where}: expected "relative/path label", got {line.strip()!r}')
    path, label_text = fields
    try:
        label = int(label_text)
    except ValueError:
        raise DatasetError(f'{where}: label {label_text!r} is not an integer') from None
    if not 0 <= label < num_classes:
        raise DatasetError(f'{where}: label {label} is outside [0, {num_classes}) (MODEL.NUM_CLASSES)')
    return path, label


def load_rgb(path):
    """Open an image file of any mode (L, P, RGBA, CMYK, 16-bit, ...) as an RGB PIL image."""
    with open(path, 'rb') as f:
        image = Image.open(f)
        image.load()
    return to_rgb(image)


def to_rgb(image):
    """An RGB PIL image from one of any mode; 16- and 32-bit greys are scaled, not clipped, to 8 bits."""
    if image.mode == 'RGB':
        return image
    if image.mode.startswith('I') or image.mode == 'F':
        values = np.asarray(image).astype(np.float64)
        if values.max() > 255:
            values = values * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    elif image.mode == 'P' and 'transparency' in image.info:
        # Going through RGBA reads the palette's transparency the way PIL expects (no warning).
        image = image.convert('RGBA')
    return image.convert('RGB')


class ImageNet2012Dataset(Dataset):
    """Images and labels of one list file; items are (transform(RGB image), label).

    With `skip_bad_images`, an image that cannot be read is logged and replaced by the next readable one
    in the list; `bad_image_count()` tells how many were replaced since the last `reset_bad_image_count()`.
    The count is a `multiprocessing.Value` created with the dataset, so DataLoader worker processes
    (forked or spawned with the dataset) add to the same counter that the main process reads.
    """

    def __init__(self, data_path, list_name, transform, num_classes, skip_bad_images=False):
        super().__init__()
        self.data_path = data_path
        self.list_file = os.path.join(data_path, list_name)
        self.samples = read_list_file(self.list_file, num_classes)
        self.transform = transform
        self.skip_bad_images = skip_bad_images
        self._bad_images = multiprocessing.Value('q', 0)
        self._worker_error = multiprocessing.Array('c', WORKER_ERROR_BYTES)

    def __len__(self):
        return len(self.samples)

    def path(self, index):
        """The full path of image `index`."""
        return os.path.join(self.data_path, self.samples[index][0])

    def __getitem__(self, index):
        try:
            return self._load(index)
        except DatasetError as err:
            if paddle.io.get_worker_info() is None and threading.current_thread() is threading.main_thread():
                raise
            # Raised in a DataLoader worker process, or in the thread that loads batches when NUM_WORKERS is 0,
            # Paddle reports it as an opaque "Blocking queue is killed" SystemError after a thread traceback. So
            # the message goes to the main thread through shared memory, with a placeholder item (label -1), and
            # `FaultAwareDataLoader` raises it there.
            with self._worker_error.get_lock():
                if not self._worker_error.value:  # the first one met, not one of a batch prefetched later
                    self._worker_error.value = str(err).encode('utf-8')[:WORKER_ERROR_BYTES - 1]
            return self.transform(Image.new('RGB', (DEMO_SIDE, DEMO_SIDE))), -1

    def worker_error(self):
        """The DatasetError message that a DataLoader worker met ('' if none)."""
        return self._worker_error.value.decode('utf-8', errors='replace')

    def _load(self, index):
        for offset in range(MAX_SKIPS_IN_A_ROW + 1):
            current = (index + offset) % len(self.samples)
            try:
                image = load_rgb(self.path(current))
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
                self._bad_image(current, err)
                continue
            return self.transform(image), self.samples[current][1]
        raise DatasetError(f'{self.list_file}: {MAX_SKIPS_IN_A_ROW + 1} unreadable images in a row from line '
                           f'{index + 1}; check the dataset with tools/check_dataset.py')

    def _bad_image(self, index, err):
        message = f'{self.path(index)}: cannot read image ({type(err).__name__}: {err})'
        if not self.skip_bad_images:
            raise DatasetError(message + '; set DATA.SKIP_BAD_IMAGES True to skip such images')
        logger.warning('%s; using another image', message)
        with self._bad_images.get_lock():
            self._bad_images.value += 1

    def bad_image_count(self):
        """Images replaced because they could not be read, in all processes, since the last reset."""
        return self._bad_images.value

    def reset_bad_image_count(self):
        """Start a new count (the training loop calls this at the start of each epoch)."""
        with self._bad_images.get_lock():
            self._bad_images.value = 0


def resolve_data_path(config):
    """DATA.DATA_PATH, or for the demo dataset the default folder when it is empty."""
    data = config.DATA
    if data.DATASET == 'demo':
        return data.DATA_PATH or DEFAULT_DEMO_PATH
    if not data.DATA_PATH:
        raise DatasetError('DATA.DATA_PATH is empty: give -data_path with the folder of train_list.txt and '
                           'val_list.txt, or -dataset demo')
    return data.DATA_PATH


def get_dataset(config, is_train):
    """The train or val `ImageNet2012Dataset` of `config` (writing the demo data first if DATASET is 'demo').

    Items are (image, label): image a uint8 numpy array [3, IMAGE_SIZE, IMAGE_SIZE], CHW, RGB, before
    normalisation (see `transforms.normalize`); label an int in [0, MODEL.NUM_CLASSES).
    """
    data_path = resolve_data_path(config)
    if config.DATA.DATASET == 'demo':
        write_demo_dataset(data_path)
    transform = build_transform(config, is_train)
    skip = config.DATA.SKIP_BAD_IMAGES and is_train
    return ImageNet2012Dataset(data_path, LIST_FILES[is_train], transform, config.MODEL.NUM_CLASSES, skip)


CLASS_NAMES_FILE = 'classes.txt'  # beside the list files: class names, line i naming label i


def read_class_names(data_path):
    """The class names of the dataset at `data_path`, in label order, from its classes.txt; None if it has none.

    tools/make_list_files.py writes classes.txt. Blank lines at the end are ignored; a blank line inside is an
    error, since it would shift every later label's name.
    """
    path = os.path.join(data_path, CLASS_NAMES_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, 'r', encoding='utf-8-sig') as f:
        names = [line.strip() for line in f.read().rstrip().splitlines()]
    if not names or not all(names):
        raise DatasetError(f'{path}: expected one class name per line, in label order, with no blank lines')
    return names


# ---- samplers ----

class TrainBatchSampler(BatchSampler):
    """Shuffled batches of this rank's share of the dataset; the same permutation on every rank.

    Each epoch shuffles with a generator seeded by (`seed`, epoch) (call `set_epoch(epoch)` before iterating), so
    that runs of different seeds share no epoch's order. The permutation is dealt out to the ranks in turn (the
    last len % world_size indices are left out so that every rank has the same share), and the last partial
    batch is dropped, so that every rank runs the same number of steps.
    """

    def __init__(self, dataset_size, batch_size, rank=0, world_size=1, seed=0):
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.epoch = 0
        if self.per_rank() < batch_size:
            raise DatasetError(f'{dataset_size} training images over {world_size} process(es) give each '
                               f'fewer than one batch of DATA.BATCH_SIZE={batch_size}')

    def per_rank(self):
        """Images each rank sees per epoch."""
        return self.dataset_size // self.world_size

    def set_epoch(self, epoch):
        """Use the permutation of `epoch` for the next iteration."""
        self.epoch = epoch

    def __iter__(self):
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.dataset_size)
        mine = order[:self.per_rank() * self.world_size][self.rank::self.world_size]
        for start in range(0, len(mine) - self.batch_size + 1, self.batch_size):
            yield mine[start:start + self.batch_size].tolist()

    def __len__(self):
        return self.per_rank() // self.batch_size


class EvalBatchSampler(BatchSampler):
    """In-order batches of indices rank, rank + world_size, ...: every image on exactly one rank, none twice.

    Nothing is padded, so counts summed over ranks are exact; ranks may run one batch fewer than others
    (and a rank gets no batch when the dataset is smaller than world_size), so reduce counts after the loop.
    """

    def __init__(self, dataset_size, batch_size, rank=0, world_size=1):
        self.indices = list(range(rank, dataset_size, world_size))
        self.batch_size = batch_size

    def __iter__(self):
        for start in range(0, len(self.indices), self.batch_size):
            yield self.indices[start:start + self.batch_size]

    def __len__(self):
        return math.ceil(len(self.indices) / self.batch_size)


def get_dataloader(config, dataset, is_train, distributed):
    """A DataLoader of (uint8 images [N, 3, S, S], int64 labels [N]) over `dataset`.

    Training uses a `TrainBatchSampler` (shuffled per epoch, last partial batch dropped; call
    `loader.batch_sampler.set_epoch(epoch)` each epoch), evaluation an `EvalBatchSampler`. With
    `distributed`, each process takes its share by paddle.distributed's rank and world size.
    """
    rank, world_size = 0, 1
    if distributed:
        rank, world_size = paddle.distributed.get_rank(), paddle.distributed.get_world_size()
    if is_train:
        sampler = TrainBatchSampler(len(dataset), config.DATA.BATCH_SIZE, rank, world_size, seed=config.SEED)
    else:
        sampler = EvalBatchSampler(len(dataset), config.DATA.BATCH_SIZE_EVAL, rank, world_size)
    return FaultAwareDataLoader(dataset, batch_sampler=sampler, num_workers=config.DATA.NUM_WORKERS,
                                worker_init_fn=runtime.quiet_worker_signals,
                                collate_fn=collate_uint8)


class FaultAwareDataLoader(DataLoader):
    """A DataLoader that raises, in the main process, the DatasetError that one of its workers met.

    The check is a read of a few bytes of shared memory per batch; the batch that carries the placeholder is
    never given to the training loop.
    """

    def __iter__(self):
        worker_error = getattr(self.dataset, 'worker_error', lambda: '')
        for batch in super().__iter__():
            message = worker_error()
            if message:
                raise DatasetError(f'{message} (while loading a batch)')
            yield batch


def collate_uint8(batch):
    """[(CHW uint8 array, label)] -> (uint8 array [N, 3, H, W], int64 array [N])."""
    images = np.stack([image for image, _ in batch])
    labels = np.array([label for _, label in batch], dtype=np.int64)
    return images, labels


# ---- demo data ----

DEMO_CLASSES = ('disc', 'square', 'triangle', 'ring', 'cross', 'stripes')
DEMO_TRAIN_PER_CLASS = 60
DEMO_VAL_PER_CLASS = 20
DEMO_SIDE = 80  # pixels of the generated images
DEMO_SEED = 20220622  # every image's random stream is derived from this, its split, class and index


def write_demo_dataset(data_path):
    """Write the demo dataset to `data_path` unless it is there; the folder appears whole or not at all.

    Images are made in a temporary folder next to `data_path`, which is then renamed to it: a run that
    stops half-way leaves nothing behind that looks finished, and two processes racing both end up
    reading the same complete copy.
    """
    if os.path.isfile(os.path.join(data_path, LIST_FILES[False])):
        return
    parent = os.path.dirname(os.path.abspath(data_path))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.demo-', dir=parent)
    try:
        _write_demo_files(staging)
        os.rename(staging, data_path)
    except OSError as err:
        # Losing the race to another process is fine; anything else at data_path is the user's to fix.
        if not os.path.isfile(os.path.join(data_path, LIST_FILES[False])):
            raise DatasetError(f'{data_path}: cannot put the demo dataset there ({err.strerror}); remove '
                               'the folder or give another DATA.DATA_PATH') from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info('wrote the demo dataset to %s', data_path)


def _write_demo_files(root):
    for is_train, per_class in ((True, DEMO_TRAIN_PER_CLASS), (False, DEMO_VAL_PER_CLASS)):
        split = 'train' if is_train else 'val'
        lines = []
        for label, name in enumerate(DEMO_CLASSES):
            os.makedirs(os.path.join(root, split, name))
            for index in range(per_class):
                relative = f'{split}/{name}/{name}_{index:04d}.jpg'
                rng = np.random.default_rng([DEMO_SEED, int(is_train), label, index])
                demo_image(label, rng).save(os.path.join(root, relative), quality=90)
                lines.append(f'{relative} {label}\n')
        with open(os.path.join(root, LIST_FILES[is_train]), 'w', encoding='utf-8') as f:
            f.writelines(lines)
    with open(os.path.join(root, CLASS_NAMES_FILE), 'w', encoding='utf-8') as f:
        f.writelines(name + '\n' for name in DEMO_CLASSES)


def demo_image(label, rng):
    """A photo-like DEMO_SIDE x DEMO_SIDE RGB image of class `label` (see `photo_like_image`) with one shape on it.

    The class sets the shape and a hue range; size, position, rotation and colour are random.
    """
    return photo_like_image(rng, (DEMO_SIDE, DEMO_SIDE), lambda draw, rng: _draw_shape(draw, label, rng, DEMO_SIDE))


def photo_like_image(rng, size, draw_content, blur=(0.3, 1.2), noise=(4, 14)):
    """A random photo-like RGB image of `size` (width, height): a two-colour gradient (top to bottom or left to
    right), what `draw_content(ImageDraw, rng)` paints on it, a Gaussian blur and sensor-like Gaussian noise,
    their radius and std drawn from the ranges `blur` and `noise`.

    The one generator of this repository's synthetic images: the demo data, tools/make_shapes_dataset.py's
    shapes and tools/benchmark.py's JPEGs. The same state of the numpy Generator `rng` gives the same image.
    """
    width, height = size
    corner_a, corner_b = rng.uniform(30, 220, 3), rng.uniform(30, 220, 3)
    if rng.random() < 0.5:
        ramp = np.linspace(0, 1, width)[None, :, None] * np.ones((height, width, 1))
    else:
        ramp = np.linspace(0, 1, height)[:, None, None] * np.ones((height, width, 1))
    background = corner_a * (1 - ramp) + corner_b * ramp
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw_content(ImageDraw.Draw(image), rng)
    image = image.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(*blur))))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(*noise), (height, width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def vivid_colour(rng, hue=None):
    """A random RGB colour of saturation 0.6-1 and value 0.55-1: of a hue within 0.06 of `hue` (0-1 around the
    colour wheel), or of any hue when `hue` is None."""
    hue = rng.random() if hue is None else hue + rng.uniform(-0.06, 0.06)
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(0.6, 1.0), rng.uniform(0.55, 1.0))
    return tuple(int(round(c * 255)) for c in rgb)


def random_placement(rng, side, radius_range):
    """(radius, cx, cy, angle) of a shape inside a side x side image: radius a fraction `radius_range` of the
    side, the centre at least radius from every edge, any rotation."""
    radius = rng.uniform(*radius_range) * side
    cx, cy = rng.uniform(radius, side - radius, 2)
    return radius, cx, cy, rng.uniform(0, 2 * math.pi)


def _draw_shape(draw, label, rng, side):
    # Each class has its own point of the colour wheel, so that colour helps the small demo model.
    colour = vivid_colour(rng, label / len(DEMO_CLASSES))
    radius, cx, cy, angle = random_placement(rng, side, (0.2, 0.35))
    name = DEMO_CLASSES[label]
    if name == 'disc':
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=colour)
    elif name == 'ring':
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour,
                     width=max(2, int(radius / 3)))
    elif name in ('square', 'triangle'):
        corners = 4 if name == 'square' else 3
        points = [(cx + radius * math.cos(angle + 2 * math.pi * k / corners),
                   cy + radius * math.sin(angle + 2 * math.pi * k / corners)) for k in range(corners)]
        draw.polygon(points, fill=colour)
    elif name == 'cross':
        arm = radius / 3
        draw.rectangle((cx - radius, cy - arm, cx + radius, cy + arm), fill=colour)
        draw.rectangle((cx - arm, cy - radius, cx + arm, cy + radius), fill=colour)
    else:  # stripes: parallel bars across a square patch
        period = rng.uniform(5, 9)
        for k in range(int(2 * radius / period) + 1):
            x = cx - radius + k * period
            draw.rectangle((x, cy - radius, x + period / 2, cy + radius), fill=colour)
