"""Benchmarks of this repository's parts, one subcommand each.

    python tools/benchmark.py data [-images 256] [-repeats 5] [-batch_size 32]
    python tools/benchmark.py train [-cfg configs/repmlp_t_224.yaml] [-batch_size 8] [-repeats 5]
    python tools/benchmark.py infer [-cfg configs/repmlp_b_224.yaml] [-batch_sizes 1 8] [-repeats 5]

`data`: images per second per worker process of the train and eval pipelines on photo-like JPEGs of
ImageNet's typical size (500x375), against a baseline built the PaddleViT way in the same run (PIL, then
paddle.vision transforms, float normalisation and erasing in the worker). Both pipelines run the same
augmentations; the figures are medians over repeats after a warm-up pass, measured twice: in one process
(what a worker does: load, transform, collate) and through a DataLoader with one worker process (adding the
transfer of the batches to the main process).

`train`: one full optimizer step (normalise, Mixup/CutMix, forward, loss, backward, AdamW) through the
training loop of engine.py, in images/s and as a fraction of the machine's float32 matrix-multiply peak
(a 2048^3 matmul timed before each step, so that both see the same load of a shared machine; the median of the
per-step ratios), counting a step as 3x the forward MACs (the backward as two products). Memory: the most that
Paddle's allocator held for tensors at once (exact) and the peak resident size (which adds the C allocator's
cache and varies by tens of MiB between runs). Each variant runs in a fresh process so that both are its own; the
baseline is the same step with fc3 computed as the official grouped 1x1 convolution. AMP is timed too where
Paddle supports it (a GPU).

`infer`: images/s of inference (random weights, random images) in the three forms a model goes through: the
training-time model in eval mode (which applies its fused FC), the deploy form (locality injected, dygraph),
and the export of tools/export.py (every BN folded, a static program run by the Paddle Inference predictor),
with the fraction of the matmul peak timed before each batch as for `train` (MACs of the deploy form x 2 FLOPs).
"""

import argparse
import logging
import math
import multiprocessing
import os
import platform
import random
import statistics
import sys
import resource
import tempfile
import time

from repo_path import ROOT  # importing it puts the repository root on sys.path

import numpy as np
import runtime  # noqa: F401  (before paddle: CPU threads, MKL path, memory reuse)
import paddle
import paddle.nn.functional as F
from paddle.io import DataLoader, Dataset
from paddle.vision import transforms as T
from PIL import Image

import datasets
import engine
import transforms
from config import get_config
from inference import count_macs, create_predictor, predictor_run, save_inference_model
from repmlp import RepMLPBlock
from utils import run_cli

JPEG_SIZE = (500, 375)  # ImageNet's typical image size
NUM_CLASSES = 10


def machine_info():
    """'N cores, CPU model, Python, Paddle, Pillow' for the report."""
    model = platform.processor() or 'unknown CPU'
    try:
        with open('/proc/cpuinfo', encoding='utf-8') as f:
            model = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    import PIL
    return (f'{os.cpu_count()} cores, {model}, Python {platform.python_version()}, Paddle {paddle.__version__}, '
            f'Pillow {PIL.__version__}')


def photo_like_jpeg(path, rng):
    """A 500x375 JPEG of datasets.photo_like_image with a few ellipses of any colour on it, blur and noise fixed
    (radius 1.5, std 6) so that every file costs about the same to decode."""
    width, height = JPEG_SIZE

    def draw_ellipses(draw, rng):
        for _ in range(6):
            cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
            draw.ellipse((cx - r, cy - r * rng.uniform(0.5, 1.5), cx + r, cy + r), fill=datasets.vivid_colour(rng))

    image = datasets.photo_like_image(rng, JPEG_SIZE, draw_ellipses, blur=(1.5, 1.5), noise=(6, 6))
    image.save(path, quality=90)


def write_jpegs(root, count):
    """`count` JPEGs under root with train_list.txt and val_list.txt naming all of them."""
    rng = np.random.default_rng(0)
    lines = []
    for index in range(count):
        name = f'img_{index:04d}.jpg'
        photo_like_jpeg(os.path.join(root, name), rng)
        lines.append(f'{name} {index % NUM_CLASSES}\n')
    for list_name in ('train_list.txt', 'val_list.txt'):
        with open(os.path.join(root, list_name), 'w', encoding='utf-8') as f:
            f.writelines(lines)


class PaddleVitRandomErasing:
    """The baseline's erasing: after normalisation, on the paddle tensor, N(0, 1) noise in a random box."""

    def __init__(self, prob):
        self.prob = prob

    def __call__(self, tensor):
        if random.random() >= self.prob:
            return tensor
        _, height, width = tensor.shape
        for _ in range(10):
            area = height * width * random.uniform(*transforms.ERASE_AREA)
            aspect = math.exp(random.uniform(*transforms.ERASE_LOG_RATIO))
            h, w = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if h < height and w < width:
                top, left = random.randint(0, height - h), random.randint(0, width - w)
                tensor[:, top:top + h, left:left + w] = paddle.normal(shape=[3, h, w])
                break
        return tensor


class PaddleVitDataset(Dataset):
    """The baseline dataset: PIL open and convert('RGB'), then a paddle.vision Compose, as PaddleViT does."""

    def __init__(self, data_path, transform):
        super().__init__()
        self.samples = datasets.read_list_file(os.path.join(data_path, 'val_list.txt'), NUM_CLASSES)
        self.data_path = data_path
        self.transform = transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        image = Image.open(os.path.join(self.data_path, path)).convert('RGB')
        return self.transform(image), label


def paddlevit_transform(config, is_train):
    """PaddleViT's train (DeiT recipe with RandAugment) or val transforms, from paddle.vision."""
    data = config.DATA
    normalize = [T.ToTensor(), T.Normalize(mean=data.IMAGENET_MEAN, std=data.IMAGENET_STD)]
    if not is_train:
        resize = transforms.eval_resize_size(data.IMAGE_SIZE, data.CROP_PCT)
        return T.Compose([T.Resize(resize, 'bilinear'), T.CenterCrop(data.IMAGE_SIZE)] + normalize)
    rand_augment = transforms.RandAugment(config.AUG.RAND_MAGNITUDE, config.AUG.RAND_LAYERS)
    return T.Compose([T.RandomResizedCrop(data.IMAGE_SIZE, scale=tuple(config.AUG.CROP_SCALE), interpolation='bicubic'),
                      T.RandomHorizontalFlip(), rand_augment] + normalize
                     + [PaddleVitRandomErasing(config.AUG.RE_PROB)])


def in_process_rate(dataset, collate, batch_size):
    """Images per second of load + transform + collate over the whole dataset, in this process."""
    start = time.perf_counter()
    for first in range(0, len(dataset), batch_size):
        collate([dataset[i] for i in range(first, min(first + batch_size, len(dataset)))])
    return len(dataset) / (time.perf_counter() - start)


def loader_rate(dataset, collate, batch_size):
    """Images per second through a DataLoader with one worker process, the first batch not timed."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=1, collate_fn=collate, shuffle=False)
    count, start = 0, None
    for images, _ in loader:
        if start is None:
            start = time.perf_counter()
            continue
        count += images.shape[0]
    return count / (time.perf_counter() - start)


def median_rate(measure, dataset, collate, batch_size, repeats):
    """Median of `repeats` measurements after one warm-up."""
    measure(dataset, collate, batch_size)
    return statistics.median(measure(dataset, collate, batch_size) for _ in range(repeats))


def bench_data(args):
    """The `data` subcommand: prints a table of images/s per worker process, ours against the baseline."""
    print(machine_info())
    config = get_config()
    config.defrost()
    config.MODEL.NUM_CLASSES = NUM_CLASSES
    with tempfile.TemporaryDirectory() as root:
        write_jpegs(root, args.images)
        config.DATA.DATA_PATH = root
        print(f'{args.images} JPEGs of {JPEG_SIZE[0]}x{JPEG_SIZE[1]}, IMAGE_SIZE {config.DATA.IMAGE_SIZE}, '
              f'batch {args.batch_size}, median of {args.repeats} after a warm-up; train: recipe '
              f'{config.AUG.RECIPE}, RandAugment m{config.AUG.RAND_MAGNITUDE} n{config.AUG.RAND_LAYERS}, '
              f'erasing p={config.AUG.RE_PROB}; eval: resize {config.DATA.INTERPOLATION} + center crop')
        print(f'{"pipeline":<10}{"measured":<22}{"baseline img/s":>16}{"ours img/s":>12}{"ratio":>8}')
        for is_train in (True, False):
            ours = datasets.get_dataset(config, is_train)
            baseline = PaddleVitDataset(root, paddlevit_transform(config, is_train))
            for label, measure in (('in one process', in_process_rate), ('DataLoader, 1 worker', loader_rate)):
                base = median_rate(measure, baseline, paddle.io.dataloader.collate.default_collate_fn,
                                   args.batch_size, args.repeats)
                mine = median_rate(measure, ours, datasets.collate_uint8, args.batch_size, args.repeats)
                name = 'train' if is_train else 'eval'
                print(f'{name:<10}{label:<22}{base:>16.1f}{mine:>12.1f}{mine / base:>7.2f}x', flush=True)


PEAK_SIZE = 2048  # the matmul that measures the machine's practical float32 peak: PEAK_SIZE^3
ON_GPU = paddle.device.cuda.device_count() > 0  # asked once: seconds_of runs it inside the timed window


def seconds_of(run):
    """Wall time of one `run()`, waiting for the GPU's queued work where there is one."""
    start = time.perf_counter()
    run()
    if ON_GPU:
        paddle.device.synchronize()
    return time.perf_counter() - start


MEASUREMENT_ERROR = ('* above 100% of the peak: the peak was timed while another process had the cores, a '
                     'measurement error, not a result; run again on a quiet machine')


def fraction_of_peak(fraction, errors):
    """The fraction as a percentage; above 100% the peak was measured low: 'error*', noted in `errors` for the
    footnote (MEASUREMENT_ERROR) that the table ends with."""
    if fraction <= 1:
        return f'{fraction:.1%}'
    errors.append(fraction)
    return 'error*'


def time_against_peak(run, flops, warmup, repeats):
    """(median seconds of `run()`, median matmul peak in GFLOP/s, median fraction of that peak reached by `run`,
    which does `flops` float operations).

    Each timed call follows a timed PEAK_SIZE^3 float32 matmul and its fraction is taken against that peak: on a
    shared machine both then see the same load, which a peak measured once before all the runs does not.
    """
    a, b = paddle.randn([PEAK_SIZE, PEAK_SIZE]), paddle.randn([PEAK_SIZE, PEAK_SIZE])
    product = lambda: paddle.matmul(a, b)  # noqa: E731
    for _ in range(warmup):
        seconds_of(product)
        seconds_of(run)
    peaks, seconds = [], []
    for _ in range(repeats):
        peaks.append(2 * PEAK_SIZE ** 3 / seconds_of(product) / 1e9)
        seconds.append(seconds_of(run))
    fractions = [flops / run_seconds / 1e9 / peak for run_seconds, peak in zip(seconds, peaks)]
    return statistics.median(seconds), statistics.median(peaks), statistics.median(fractions)


def fc3_as_grouped_conv(block, parts):
    """The baseline's training-time fc3: the official grouped 1x1 conv over partitions as 1x1 maps, then BN and
    the local perceptron as in RepMLPBlock. [S, M, h*w] -> [S, M, h*w]."""
    sets, area = block.num_sharesets, block.h * block.w
    maps = parts.transpose([1, 0, 2]).reshape([-1, sets * area, 1, 1])  # [M, S*h*w, 1, 1]
    out = F.conv2d(maps, block.fc3.weight, groups=sets).reshape([-1, sets, area]).transpose([1, 0, 2])
    out = block.fc3_bn(out.unsqueeze(0)).squeeze(0)
    return out + block._local_perceptron(parts) if block.reparam_conv_k else out


def peak_tensor_mib(run):
    """The most memory Paddle's allocator holds for tensors at once during `run()` (MiB): on the CPU its host
    statistic, exact and free of the C allocator's caching that the resident size includes."""
    if ON_GPU:
        paddle.device.cuda.reset_max_memory_allocated()
        run()
        return paddle.device.cuda.max_memory_allocated() / 2 ** 20
    paddle.base.core.host_memory_stat_reset_peak_value('Allocated', 0)
    run()
    return paddle.base.core.host_memory_stat_peak_value('Allocated', 0) / 2 ** 20


def train_step_child(cfg_file, batch_size, repeats, amp, grouped_conv, step_flops, results):
    """In a fresh process: `time_against_peak` of one training step, the peak tensor memory of one more step (without
    the peak's matrices) and the peak resident memory of the process (MiB)."""
    if grouped_conv:
        RepMLPBlock._training_branches = fc3_as_grouped_conv
    config = get_config(cfg_file)
    config.defrost()
    config.DATA.BATCH_SIZE, config.AMP = batch_size, amp
    config.freeze()
    paddle.set_device('gpu' if ON_GPU else 'cpu')
    logger = logging.getLogger('benchmark')
    logger.addHandler(logging.NullHandler())
    logger.propagate = False
    trainer = engine.build_trainer(config, logger, steps_per_epoch=1000)
    size = config.DATA.IMAGE_SIZE
    images = paddle.to_tensor(np.random.default_rng(0).integers(0, 256, (batch_size, 3, size, size), np.uint8))
    labels = paddle.arange(batch_size, dtype='int64') % config.MODEL.NUM_CLASSES
    step = lambda: engine.train_one_epoch(trainer, [(images, labels)], 0)  # noqa: E731
    timing = time_against_peak(step, step_flops, 2, repeats)
    tensors_mib = peak_tensor_mib(step)
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux
    results.put((*timing, tensors_mib, peak_rss_mib))


def run_in_child(target, *args):
    """Run `target(*args, queue)` in a fresh spawned process and return what it put in the queue."""
    context = multiprocessing.get_context('spawn')
    results = context.Queue()
    process = context.Process(target=target, args=(*args, results))
    process.start()
    value = results.get()
    process.join()
    return value


def bench_train(args):
    """The `train` subcommand: images/s, fraction of the matmul peak and peak memory of one training step."""
    print(machine_info())
    config = get_config(args.cfg)
    step_macs = 3 * count_macs(engine.build_repmlp(config), config.DATA.IMAGE_SIZE)
    print(f'{config.MODEL.NAME}, batch {args.batch_size}, median of {args.repeats} steps after 2, each after a '
          f'{PEAK_SIZE}^3 matmul (the peak); a step counted as 3 x {step_macs / 3e9:.2f} GMACs per image')
    print(f'{"fc3 computed as":<26}{"AMP":<6}{"images/s":>10}{"peak GFLOP/s":>14}{"of peak":>10}'
          f'{"tensors MiB":>13}{"RSS MiB":>9}')
    step_flops = 2 * step_macs * args.batch_size
    errors = []
    for amp in ([False, True] if ON_GPU else [False]):
        for label, grouped in (('batched matmul (ours)', False), ('grouped 1x1 conv', True)):
            seconds, peak, fraction, tensors, rss = run_in_child(
                train_step_child, args.cfg, args.batch_size, args.repeats, amp, grouped, step_flops)
            print(f'{label:<26}{"on" if amp else "off":<6}{args.batch_size / seconds:>10.2f}{peak:>14.0f}'
                  f'{fraction_of_peak(fraction, errors):>10}{tensors:>13.0f}{rss:>9.0f}', flush=True)
    if errors:
        print(MEASUREMENT_ERROR)
    if not ON_GPU:
        print('AMP: not timed, Paddle has no mixed precision on a CPU')


def bench_infer(args):
    """The `infer` subcommand: images/s and fraction of the matmul peak of the three inference forms."""
    print(machine_info())
    config = get_config(args.cfg)
    size = config.DATA.IMAGE_SIZE
    paddle.seed(0)
    training = engine.build_repmlp(config)
    training.eval()
    deploy = engine.build_repmlp(config)
    deploy.set_state_dict(training.state_dict())
    deploy.locality_injection()
    macs = count_macs(deploy, size)
    print(f'{config.MODEL.NAME} at {size}, median of {args.repeats} batches after 2, each after a {PEAK_SIZE}^3 '
          f'matmul (the peak); {macs / 1e9:.2f} GMACs per image (deploy form)')
    with tempfile.TemporaryDirectory() as folder:
        exported = engine.build_repmlp(config)
        exported.set_state_dict(training.state_dict())
        exported.fold_batchnorms()
        save_inference_model(exported, size, folder)
        del exported
        predictor = create_predictor(folder)
        print(f'{"form":<36}{"batch":>6}{"images/s":>10}{"ms/batch":>10}{"peak GFLOP/s":>14}{"of peak":>10}')
        errors = []
        for batch in args.batch_sizes:
            images = np.random.default_rng(batch).standard_normal((batch, 3, size, size)).astype(np.float32)
            tensor = paddle.to_tensor(images)
            forms = [('training-time (eval, fused FC)', lambda: training(tensor).numpy()),
                     ('deploy (locality injected)', lambda: deploy(tensor).numpy()),
                     ('exported, Paddle Inference', lambda: predictor_run(predictor, images))]
            for label, run in forms:
                with paddle.no_grad():
                    seconds, peak, fraction = time_against_peak(run, 2 * macs * batch, 2, args.repeats)
                print(f'{label:<36}{batch:>6}{batch / seconds:>10.2f}{seconds * 1e3:>10.1f}{peak:>14.0f}'
                      f'{fraction_of_peak(fraction, errors):>10}', flush=True)
        if errors:
            print(MEASUREMENT_ERROR)


SUBCOMMANDS = {
    'data': bench_data,
    'train': bench_train,
    'infer': bench_infer,
}


def build_parser():
    """The argparse parser: one sub-parser per entry of SUBCOMMANDS."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest='command', required=True)
    data = commands.add_parser('data', help='data pipeline throughput against the PaddleViT-style baseline')
    data.add_argument('-images', type=int, default=256, help='JPEGs to generate and read per pass')
    data.add_argument('-repeats', type=int, default=5, help='timed passes after the warm-up')
    data.add_argument('-batch_size', type=int, default=32, help='images per collated batch')
    train = commands.add_parser('train', help='one training step: images/s, fraction of matmul peak, memory')
    train.add_argument('-cfg', default=os.path.join(ROOT, 'configs', 'repmlp_t_224.yaml'), help='model config')
    train.add_argument('-batch_size', type=int, default=8, help='images per step')
    train.add_argument('-repeats', type=int, default=5, help='timed steps after two untimed ones')
    infer = commands.add_parser('infer', help='inference images/s of the training-time, deploy and exported forms')
    infer.add_argument('-cfg', default=os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml'), help='model config')
    infer.add_argument('-batch_sizes', type=int, nargs='+', default=[1, 8], help='images per batch, each timed')
    infer.add_argument('-repeats', type=int, default=5, help='timed batches after two untimed ones')
    return parser


def main(argv=None):
    """Command-line entry."""
    args = build_parser().parse_args(argv)
    SUBCOMMANDS[args.command](args)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
