"""Check a list-file dataset before training on it: every line parses, every label fits, every image decodes.

    python tools/check_dataset.py -cfg configs/repmlp_b_224.yaml -data_path /data/imagenet

Reads train_list.txt and val_list.txt under the data path, decodes every image in worker processes with a
progress bar, prints each problem and a summary, and exits with 1 when anything is wrong (2 for bad usage).
"""

import multiprocessing
import os
import sys
import time

from PIL import Image

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
from config import build_arg_parser, get_config, update_config
from datasets import LIST_FILES, DatasetError, list_file_lines, parse_list_line, resolve_data_path, to_rgb
from utils import run_cli


def check_image(path):
    """None if `path` decodes to an RGB image, else the reason it does not."""
    try:
        with open(path, 'rb') as f:
            image = Image.open(f)
            # Decoding at a reduced scale still reads every compressed byte of a JPEG, several times faster.
            image.draft('RGB', (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
            to_rgb(image)
    except FileNotFoundError:
        return 'file not found'
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        return f'cannot decode ({type(err).__name__}: {err})'
    return None


def read_lines(list_file, num_classes, problems):
    """[(path, line)] of the good lines of `list_file`; bad lines are appended to `problems`."""
    if not os.path.isfile(list_file):
        problems.append(f'{list_file}: list file not found')
        return []
    entries = []
    for line_number, line in list_file_lines(list_file):
        try:
            relative, _ = parse_list_line(list_file, line_number, line, num_classes)
        except DatasetError as err:
            problems.append(str(err))
            continue
        entries.append((os.path.join(os.path.dirname(list_file), relative), f'{list_file} line {line_number}'))
    if not entries and not problems:
        problems.append(f'{list_file}: no images listed')
    return entries


def progress(done, total, start):
    """One carriage-return progress line on stderr."""
    rate = done / max(time.time() - start, 1e-9)
    width = 30
    filled = int(width * done / max(total, 1))
    sys.stderr.write(f'\r[{"#" * filled}{"." * (width - filled)}] {done}/{total} images, {rate:.0f}/s ')
    sys.stderr.flush()


def check_images(entries, workers, problems):
    """Decode every image of `entries` in `workers` processes, appending failures to `problems`."""
    start = time.time()
    with multiprocessing.Pool(workers) as pool:
        results = pool.imap(check_image, [path for path, _ in entries], chunksize=32)
        for done, ((path, where), reason) in enumerate(zip(entries, results), start=1):
            if reason is not None:
                problems.append(f'{where}: {path}: {reason}')
            if done % 200 == 0 or done == len(entries):
                progress(done, len(entries), start)
        # Let the workers exit on their own: the pool's terminate() on leaving `with` sends SIGTERM, and the
        # forked workers inherit Paddle's signal handler, which allocates memory and so hangs forever when the
        # signal lands inside malloc (seen once in the test suite: a worker deadlocked on malloc's lock).
        pool.close()
        pool.join()
    sys.stderr.write('\n')


def main(argv=None):
    """Command-line entry: returns the exit code (1 when a problem was found)."""
    parser = build_arg_parser(__doc__.splitlines()[0])
    parser.add_argument('-workers', type=int, default=os.cpu_count(), help='decoding processes')
    args = parser.parse_args(argv)
    config = update_config(get_config(), args)
    data_path = resolve_data_path(config)
    failed = False
    for list_name in (LIST_FILES[True], LIST_FILES[False]):
        problems = []
        entries = read_lines(os.path.join(data_path, list_name), config.MODEL.NUM_CLASSES, problems)
        check_images(entries, max(1, args.workers), problems)
        for problem in problems:
            print(problem)
        bad = len(problems)
        print(f'{list_name}: {len(entries)} lines parsed, {bad} problem(s)')
        failed = failed or bad > 0
    print('FAILED: fix the problems above' if failed else 'OK: every line parses and every image decodes')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
