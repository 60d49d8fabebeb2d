"""datasets.py and the data tools: list files and their errors, bad images, samplers over 1-3 ranks, the
loader's contract, the demo data, tools/make_list_files.py, tools/check_dataset.py, tools/make_shapes_dataset.py."""

import filecmp
import hashlib
import multiprocessing.pool
import os

import numpy as np
import paddle
import pytest
from PIL import Image

import datasets
from config import get_config
from datasets import DatasetError, EvalBatchSampler, TrainBatchSampler
import check_dataset
import make_list_files
import make_shapes_dataset


def make_config(data_path, dataset='imagenet2012', **data):
    config = get_config()
    config.defrost()
    config.DATA.DATASET, config.DATA.DATA_PATH, config.DATA.IMAGE_SIZE = dataset, str(data_path), 32
    config.DATA.BATCH_SIZE, config.DATA.BATCH_SIZE_EVAL, config.DATA.NUM_WORKERS = 4, 3, 0
    config.MODEL.NUM_CLASSES = 3
    for key, value in data.items():
        config.DATA[key] = value
    return config


def write_tree(root, per_class=3, classes=('n02', 'n01', 'n03')):
    """root/{train,val}/<class>/img_k.jpg, small random JPEGs."""
    rng = np.random.default_rng(0)
    for split in ('train', 'val'):
        for name in classes:
            os.makedirs(root / split / name)
            for k in range(per_class):
                pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f'img_{k}.jpg')


@pytest.fixture
def tree(tmp_path):
    write_tree(tmp_path)
    assert make_list_files.main([str(tmp_path)]) == 0
    return tmp_path


def test_make_list_files_sorted_synsets(tree):
    lines = (tree / 'train_list.txt').read_text().splitlines()
    assert lines[0] == 'train/n01/img_0.jpg 0' and lines[-1] == 'train/n03/img_2.jpg 2' and len(lines) == 9
    assert (tree / 'val_list.txt').read_text().splitlines()[3] == 'val/n02/img_0.jpg 1'


def test_make_list_files_keeps_lists_in_another_order_unless_forced(tree):
    """A classes.txt in another order (a model's outputs mean these classes) is kept with a one-line error; the same
    lists again are fine; -force replaces them."""
    (tree / 'classes.txt').write_text('n03\nn02\nn01\n')
    before = {name: (tree / name).read_bytes() for name in ('train_list.txt', 'val_list.txt', 'classes.txt')}
    message = r'classes.txt already exist\(s\) with other contents'
    with pytest.raises(make_list_files.ListFileError, match=message) as err:
        make_list_files.main([str(tree)])
    assert '-force' in str(err.value) and '\n' not in str(err.value)
    assert {name: (tree / name).read_bytes() for name in before} == before
    assert make_list_files.main([str(tree), '-force']) == 0
    assert (tree / 'classes.txt').read_text() == 'n01\nn02\nn03\n'
    assert make_list_files.main([str(tree)]) == 0  # unchanged contents: nothing to refuse


def test_make_list_files_missing_folder_is_usage_error(tmp_path):
    with pytest.raises(make_list_files.ListFileError, match='train'):
        make_list_files.main([str(tmp_path)])


def test_dataset_items_and_loader_batches(tree):
    config = make_config(tree)
    for is_train in (True, False):
        dataset = datasets.get_dataset(config, is_train)
        image, label = dataset[0]
        assert image.dtype == np.uint8 and image.shape == (3, 32, 32) and isinstance(label, int)
        loader = datasets.get_dataloader(config, dataset, is_train, distributed=False)
        batches = list(loader)
        images, labels = batches[0]
        assert images.dtype == paddle.uint8 and labels.dtype == paddle.int64
        assert images.shape == [4 if is_train else 3, 3, 32, 32]
        assert sum(b[0].shape[0] for b in batches) == (8 if is_train else 9)  # train drops 1 of 9


@pytest.mark.parametrize('text, message', [
    ('train/n01/img_0.jpg\n', 'train_list.txt line 1: expected "relative/path label"'),
    ('train/n01/img_0.jpg 0\ntrain/n01/img_1.jpg zero\n', 'train_list.txt line 2: label \'zero\''),
    ('train/n01/img_0.jpg 3\n', 'train_list.txt line 1: label 3 is outside [0, 3) (MODEL.NUM_CLASSES)'),
    ('train/n01/img_0.jpg -1\n', 'label -1 is outside'),
    ('\n', 'no images listed'),
])
def test_bad_list_lines_name_file_and_line(tree, text, message):
    (tree / 'train_list.txt').write_text(text)
    with pytest.raises(DatasetError) as err:
        datasets.get_dataset(make_config(tree), is_train=True)
    assert message in str(err.value) and str(tree) in str(err.value) and '\n' not in str(err.value)


def as_windows_editors_write(text):
    """The same list as a Windows editor saves it: a UTF-8 byte-order mark, CRLF, a tab before each label and
    blank lines at the end."""
    lines = [line.rsplit(' ', 1) for line in text.splitlines()]
    return ('\ufeff' + '\r\n'.join(f'{path}\t{label}' for path, label in lines) + '\r\n\r\n\r\n').encode('utf-8')


def test_list_files_from_windows_editors_load_like_clean_ones(tree, capsys):
    """BOM + CRLF + tabs + trailing blank lines: the same samples, the same batches, and check_dataset passes."""
    config = make_config(tree)
    clean = {is_train: datasets.get_dataset(config, is_train) for is_train in (True, False)}
    for name in datasets.LIST_FILES.values():
        (tree / name).write_bytes(as_windows_editors_write((tree / name).read_text(encoding='utf-8')))
    assert (tree / 'val_list.txt').read_bytes().startswith(b'\xef\xbb\xbf')
    for is_train in (True, False):
        assert datasets.get_dataset(config, is_train).samples == clean[is_train].samples
    np.testing.assert_array_equal(datasets.get_dataset(config, False)[0][0], clean[False][0][0])
    assert check_dataset.main(['-data_path', str(tree), '-opts', 'MODEL.NUM_CLASSES', '3']) == 0


def test_sixteen_bit_greys_are_divided_by_257():
    """65535 / 255 = 257 exactly: 257 k + 129 is k + 0.502 and rounds up, where a scale of 255 / 65536 would round
    it down."""
    grey = Image.fromarray(np.array([[0, 257, 51529, 65535]], dtype=np.uint16))
    assert grey.mode.startswith('I')
    assert np.asarray(datasets.to_rgb(grey))[0, :, 0].tolist() == [0, 1, 201, 255]


def test_missing_list_file_and_empty_path(tmp_path):
    with pytest.raises(DatasetError, match='val_list.txt: list file not found'):
        datasets.get_dataset(make_config(tmp_path), is_train=False)
    with pytest.raises(DatasetError, match='DATA.DATA_PATH is empty'):
        datasets.get_dataset(make_config(''), is_train=False)


def break_images(tree):
    os.remove(tree / 'train' / 'n01' / 'img_1.jpg')
    (tree / 'train' / 'n02' / 'img_0.jpg').write_bytes(b'not a jpeg')


def test_bad_image_stops_training_by_default_with_its_path(tree):
    break_images(tree)
    dataset = datasets.get_dataset(make_config(tree), is_train=True)
    with pytest.raises(DatasetError, match='img_1.jpg: cannot read image .*DATA.SKIP_BAD_IMAGES'):
        dataset[1]
    with pytest.raises(DatasetError, match='n02/img_0.jpg: cannot read image'):
        dataset[3]


@pytest.mark.parametrize('num_workers', [0, 2])
def test_skipped_bad_images_are_counted_across_workers(tree, num_workers):
    break_images(tree)
    config = make_config(tree, SKIP_BAD_IMAGES=True, NUM_WORKERS=num_workers, BATCH_SIZE=3)
    dataset = datasets.get_dataset(config, is_train=True)
    loader = datasets.get_dataloader(config, dataset, is_train=True, distributed=False)
    for epoch in range(2):
        dataset.reset_bad_image_count()
        loader.batch_sampler.set_epoch(epoch)
        assert sum(images.shape[0] for images, _ in loader) == 9
        assert dataset.bad_image_count() == 2


def test_every_image_unreadable_is_an_error(tree):
    for path in (tree / 'train').rglob('*.jpg'):
        path.write_bytes(b'')
    dataset = datasets.get_dataset(make_config(tree, SKIP_BAD_IMAGES=True), is_train=True)
    with pytest.raises(DatasetError, match='unreadable images in a row'):
        dataset[0]


@pytest.mark.parametrize('size', [1, 2, 6, 7, 10, 11, 12, 13])
@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_eval_sampler_gives_every_index_exactly_once(size, world_size):
    seen = []
    for rank in range(world_size):
        sampler = EvalBatchSampler(size, batch_size=4, rank=rank, world_size=world_size)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(0 < len(b) <= 4 for b in batches)
        seen += [i for batch in batches for i in batch]
    assert sorted(seen) == list(range(size))


@pytest.mark.parametrize('size', [12, 13, 14, 30])
@pytest.mark.parametrize('world_size', [1, 2, 3])
def test_train_sampler_shards_shuffles_and_drops_last(size, world_size):
    batch_size = 2
    per_rank = size // world_size
    orders = []
    for epoch in (0, 1):
        seen = []
        for rank in range(world_size):
            sampler = TrainBatchSampler(size, batch_size, rank, world_size)
            sampler.set_epoch(epoch)
            batches = list(sampler)
            assert len(batches) == len(sampler) == per_rank // batch_size
            assert all(len(b) == batch_size for b in batches)
            seen += [i for batch in batches for i in batch]
        assert len(seen) == len(set(seen)) == world_size * (per_rank // batch_size) * batch_size
        orders.append(seen)
    assert orders[0] != orders[1]
    again = TrainBatchSampler(size, batch_size, 0, world_size)
    again.set_epoch(1)
    assert [i for b in again for i in b] == orders[1][:len(orders[1]) // world_size]


def test_train_sampler_order_follows_the_seed():
    def first_epoch(seed):
        return [i for batch in TrainBatchSampler(100, 10, seed=seed) for i in batch]
    assert first_epoch(1) == first_epoch(1) != first_epoch(2)
    shifted = TrainBatchSampler(100, 10, seed=0)
    shifted.set_epoch(1)
    assert first_epoch(1) != [i for batch in shifted for i in batch]  # seed 1 is not seed 0 one epoch later


def test_loader_takes_its_shuffle_seed_from_the_config(tree):
    orders = []
    for seed in (0, 0, 5):
        config = make_config(tree)
        config.SEED = seed
        loader = datasets.get_dataloader(config, datasets.get_dataset(config, is_train=True), is_train=True,
                                         distributed=False)
        orders.append(list(loader.batch_sampler))
    assert orders[0] == orders[1] != orders[2]


def test_train_sampler_too_few_images_is_an_error():
    with pytest.raises(DatasetError, match='DATA.BATCH_SIZE=8'):
        TrainBatchSampler(10, 8, 0, 2)


def test_demo_dataset_is_deterministic_and_complete(tmp_path):
    first, second = tmp_path / 'a' / 'demo', tmp_path / 'b' / 'demo'
    datasets.write_demo_dataset(str(first))
    datasets.write_demo_dataset(str(second))
    mtime = os.path.getmtime(first / 'val_list.txt')
    datasets.write_demo_dataset(str(first))  # already there: left alone
    assert os.path.getmtime(first / 'val_list.txt') == mtime
    assert os.listdir(tmp_path / 'a') == ['demo']  # no staging folder left behind
    val_lines = (first / 'val_list.txt').read_text().splitlines()
    assert len(val_lines) >= 100
    assert len({line.split()[1] for line in val_lines}) == len(datasets.DEMO_CLASSES)
    files = sorted(str(p.relative_to(first)) for p in first.rglob('*') if p.is_file())
    assert len(files) > 400
    match, mismatch, errors = filecmp.cmpfiles(first, second, files, shallow=False)
    assert not mismatch and not errors


def pixels_md5(images):
    digest = hashlib.md5()
    for image in images:
        digest.update(image.tobytes())
    return digest.hexdigest()


def test_generated_images_keep_their_pixels():
    """The README's demo and fine-tuning figures were measured on these images: the first training image of
    every class of the demo data and of tools/make_shapes_dataset.py (both colour modes), pixel for pixel."""
    demo = [datasets.demo_image(label, np.random.default_rng([datasets.DEMO_SEED, 1, label, 0]))
            for label in range(len(datasets.DEMO_CLASSES))]
    assert pixels_md5(demo) == '0c457ed5d8f9eee19bf3cdfe6203205f'
    shapes = [make_shapes_dataset.shape_image(label, np.random.default_rng([make_shapes_dataset.SEED, True, label, 0]),
                                              any_colour)
              for label in range(len(make_shapes_dataset.CLASSES)) for any_colour in (False, True)]
    assert pixels_md5(shapes) == '4421b4b0d28058c4b27789bd45e88586'


def test_demo_dataset_through_get_dataset(tmp_path):
    config = make_config(tmp_path / 'demo', dataset='demo')
    config.MODEL.NUM_CLASSES = len(datasets.DEMO_CLASSES)
    dataset = datasets.get_dataset(config, is_train=False)
    image, label = dataset[len(dataset) - 1]
    assert image.shape == (3, 32, 32) and label == len(datasets.DEMO_CLASSES) - 1


def test_check_dataset_passes_then_reports_problems(tree, capsys):
    args = ['-data_path', str(tree), '-opts', 'MODEL.NUM_CLASSES', '3', '-workers', '1']
    assert check_dataset.main(args) == 0
    break_images(tree)
    with open(tree / 'val_list.txt', 'a') as f:
        f.write('val/n01/img_0.jpg 7\n')
    assert check_dataset.main(args) == 1
    out = capsys.readouterr().out
    assert 'img_1.jpg: file not found' in out and 'n02/img_0.jpg: cannot decode' in out
    assert 'val_list.txt line 10: label 7 is outside' in out and 'FAILED' in out


def test_check_dataset_lets_its_workers_exit_before_the_pool_ends(tree, monkeypatch):
    """The pool's terminate() would SIGTERM live workers, which inherit Paddle's signal handler: it allocates memory
    and hangs forever when the signal lands inside malloc (a stress run of the tool hung within 15 calls)."""
    terminate = multiprocessing.pool.Pool.terminate
    alive_at_terminate = []

    def checked_terminate(pool):
        alive_at_terminate.extend(worker for worker in pool._pool if worker.is_alive())
        terminate(pool)
    monkeypatch.setattr(multiprocessing.pool.Pool, 'terminate', checked_terminate)
    assert check_dataset.main(['-data_path', str(tree), '-opts', 'MODEL.NUM_CLASSES', '3', '-workers', '2']) == 0
    assert not alive_at_terminate


@pytest.mark.parametrize('key, value, message', [
    ('DATA.DATASET', 'cifar', "DATA.DATASET is 'cifar'"),
    ('DATA.INTERPOLATION', 'area', 'DATA.INTERPOLATION'),
    ('DATA.RESIZE_MODE', 'longer', 'DATA.RESIZE_MODE'),
    ('DATA.BATCH_SIZE', 0, 'DATA.BATCH_SIZE must be positive'),
    ('DATA.IMAGENET_STD', [0.2, 0.2], 'DATA.IMAGENET_STD must be three numbers'),
    ('AUG.RECIPE', 'deit', 'AUG.RECIPE'),
    ('AUG.RE_PROB', 1.5, 'AUG.RE_PROB must be a probability'),
    ('AUG.SMOOTHING', 1.0, 'AUG.SMOOTHING'),
    ('AUG.CROP_SCALE', [0.5, 1.5], 'AUG.CROP_SCALE must be fractions of the image'),
    ('AUG.CROP_RATIO', [2.0, 1.0], 'AUG.CROP_RATIO must be two numbers 0 < low <= high'),
    ('AUG.FLIP_PROB', -0.1, 'AUG.FLIP_PROB must be a probability'),
    ('TRAIN.LR_SCHEDULE', 'step', "TRAIN.LR_SCHEDULE is 'step'"),
])
def test_bad_data_and_aug_values_name_the_key(key, value, message):
    from config import ConfigError, build_arg_parser, update_config
    args = build_arg_parser('test').parse_args(['-opts', key, repr(value)])
    with pytest.raises(ConfigError, match=message.replace('(', r'\(')):
        update_config(get_config(), args)


def test_data_flags_set_their_keys():
    from config import build_arg_parser, update_config
    args = build_arg_parser('test').parse_args(['-dataset', 'demo', '-data_path', 'x', '-batch_size', '5',
                                               '-batch_size_eval', '7'])
    data = update_config(get_config(), args).DATA
    assert (data.DATASET, data.DATA_PATH, data.BATCH_SIZE, data.BATCH_SIZE_EVAL) == ('demo', 'x', 5, 7)


def test_benchmark_data_runs(capsys):
    import benchmark
    assert benchmark.main(['data', '-images', '6', '-repeats', '1', '-batch_size', '3']) == 0
    out = capsys.readouterr().out
    assert 'cores' in out and out.count('x\n') == 4


def test_demo_dataset_refuses_a_folder_in_the_way(tmp_path):
    (tmp_path / 'demo').mkdir()
    (tmp_path / 'demo' / 'notes.txt').write_text('mine')
    with pytest.raises(DatasetError, match='cannot put the demo dataset there'):
        datasets.write_demo_dataset(str(tmp_path / 'demo'))
    assert os.listdir(tmp_path) == ['demo']
