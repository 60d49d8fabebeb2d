"""Faults and bad input, the fast cases: each must end in its documented outcome, nothing lost and nothing silent.

Bad data (datasets.py): a DatasetError naming the file and line, or with DATA.SKIP_BAD_IMAGES the image is
logged, replaced and counted. Bad configs and bad weights on the command line: one `error: ...` line naming the
key or file, exit code 2 (the weights' and checkpoints' own errors and failing saves: test_checkpoint.py).
A non-finite loss names the step and the last good checkpoint; AMP's skipped steps are counted, not fatal.
The interruption cases (SIGKILL) are in test_faults_slow.py.
"""

import os

import numpy as np
import paddle
import pytest
from PIL import Image

import checkpoint
import engine
import utils
from datasets import DatasetError, FaultAwareDataLoader, ImageNet2012Dataset, collate_uint8
from helpers import fake_checkpoint, finish_process, start_process, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')


def error_lines(stderr):
    """The lines a user reads on stderr, without Paddle's start-up warnings."""
    return [line for line in stderr.splitlines() if line.strip() and 'Warning' not in line
            and not line.startswith('  warnings.warn')]


def assert_one_error_line(code, stderr, *words):
    assert code == 2, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    lines = [line for line in error_lines(stderr) if line.startswith('error: ')]
    assert len(lines) == 1, stderr[-3000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------- input data

def small_image(path, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(path, format='JPEG')


def to_array(image):
    """A module-level transform, so DataLoader workers can use it whatever their start method."""
    return np.asarray(image.resize((8, 8))).transpose(2, 0, 1).copy()


@pytest.fixture
def bad_images(tmp_path):
    """A dataset folder with good images 0..3 and three bad files named .JPEG; returns (folder, {kind: index})."""
    for index in range(4):
        small_image(tmp_path / f'good{index}.JPEG', index)
    (tmp_path / 'empty.JPEG').write_bytes(b'')
    data = (tmp_path / 'good0.JPEG').read_bytes()
    (tmp_path / 'truncated.JPEG').write_bytes(data[:len(data) // 2])
    (tmp_path / 'text.JPEG').write_text('this is not an image\n')
    names = ['good0', 'empty', 'good1', 'truncated', 'good2', 'text', 'good3']
    (tmp_path / 'train_list.txt').write_text(''.join(f'{name}.JPEG {i % 3}\n' for i, name in enumerate(names)))
    return tmp_path, {name: index for index, name in enumerate(names)}


@pytest.mark.parametrize('kind', ['empty', 'truncated', 'text'])
def test_a_bad_image_is_an_error_naming_the_file(bad_images, kind):
    folder, index = bad_images
    dataset = ImageNet2012Dataset(str(folder), 'train_list.txt', to_array, num_classes=3)
    with pytest.raises(DatasetError) as error:
        dataset[index[kind]]
    message = str(error.value)
    assert f'{kind}.JPEG: cannot read image' in message and 'DATA.SKIP_BAD_IMAGES' in message
    assert '\n' not in message


def test_bad_images_are_skipped_and_counted_when_configured(bad_images):
    folder, index = bad_images
    dataset = ImageNet2012Dataset(str(folder), 'train_list.txt', to_array, num_classes=3, skip_bad_images=True)
    items = [dataset[i] for i in range(len(dataset))]
    assert dataset.bad_image_count() == 3
    # each bad image is replaced by the next readable one, with that image's label
    assert items[index['empty']][1] == index['good1'] % 3
    np.testing.assert_array_equal(items[index['truncated']][0], items[index['good2']][0])
    dataset.reset_bad_image_count()
    assert dataset.bad_image_count() == 0


def write_list(folder, text, name='train_list.txt', newline='\n'):
    with open(folder / name, 'w', encoding='utf-8', newline=newline) as file:
        file.write(text)


@pytest.mark.parametrize('line, words', [
    ('good0.JPEG', ['line 2', 'expected "relative/path label"']),
    ('good0.JPEG cat', ['line 2', "label 'cat' is not an integer"]),
    ('good0.JPEG 7', ['line 2', 'label 7 is outside [0, 3)']),
    ('good0.JPEG -1', ['line 2', 'label -1 is outside [0, 3)']),
])
def test_a_bad_list_line_is_an_error_naming_file_and_line(tmp_path, line, words):
    small_image(tmp_path / 'good0.JPEG')
    write_list(tmp_path, f'good0.JPEG 0\n{line}\n')
    with pytest.raises(DatasetError) as error:
        ImageNet2012Dataset(str(tmp_path), 'train_list.txt', to_array, num_classes=3)
    message = str(error.value)
    assert message.startswith(str(tmp_path / 'train_list.txt'))
    for word in words:
        assert word in message


def test_a_listed_path_that_does_not_exist(tmp_path):
    small_image(tmp_path / 'good0.JPEG')
    write_list(tmp_path, 'good0.JPEG 0\nmissing/n01440764_1.JPEG 1\n')
    dataset = ImageNet2012Dataset(str(tmp_path), 'train_list.txt', to_array, num_classes=3)
    with pytest.raises(DatasetError, match=r'missing/n01440764_1\.JPEG: cannot read image \(FileNotFoundError'):
        dataset[1]
    skipping = ImageNet2012Dataset(str(tmp_path), 'train_list.txt', to_array, num_classes=3, skip_bad_images=True)
    assert skipping[1][1] == 0 and skipping.bad_image_count() == 1


def test_windows_line_ends_and_trailing_spaces_just_work(tmp_path):
    (tmp_path / 'a dir').mkdir()
    small_image(tmp_path / 'good0.JPEG')
    small_image(tmp_path / 'a dir' / 'good 1.JPEG', 1)
    write_list(tmp_path, 'good0.JPEG 2   \r\n  a dir/good 1.JPEG\t1 \r\n\r\n', newline='')
    dataset = ImageNet2012Dataset(str(tmp_path), 'train_list.txt', to_array, num_classes=3)
    assert dataset.samples == [('good0.JPEG', 2), ('a dir/good 1.JPEG', 1)]
    assert [label for _, label in (dataset[0], dataset[1])] == [2, 1]


def test_a_bad_image_in_a_dataloader_worker_is_the_same_error(bad_images):
    folder, index = bad_images
    dataset = ImageNet2012Dataset(str(folder), 'train_list.txt', to_array, num_classes=3)
    loader = FaultAwareDataLoader(dataset, batch_size=2, shuffle=False, num_workers=1, collate_fn=collate_uint8)
    with pytest.raises(DatasetError) as error:
        for _ in loader:
            pass
    assert 'empty.JPEG: cannot read image' in str(error.value) and 'while loading a batch' in str(error.value)


def test_a_bad_image_in_a_worker_gives_one_error_line_from_the_entry_point(tmp_path):
    """The whole path: DataLoader worker process -> main process -> run_cli, exit code 2, no traceback."""
    for label in range(6):
        for index in range(3):
            small_image(tmp_path / f'{label}_{index}.JPEG', label * 3 + index)
    (tmp_path / '2_1.JPEG').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
    lines = [f'{label}_{index}.JPEG {label}\n' for label in range(6) for index in range(3)]
    write_list(tmp_path, ''.join(lines))
    write_list(tmp_path, ''.join(lines), name='val_list.txt')
    args = ['-cfg', TINY, '-dataset', 'imagenet2012', '-data_path', str(tmp_path), '-output', str(tmp_path / 'out'),
            '-batch_size', '18', '-opts', 'DATA.NUM_WORKERS', '2', 'TRAIN.NUM_EPOCHS', '1']
    code, _, err = finish_process(start_process(['main_single_gpu.py'] + args))
    line = assert_one_error_line(code, err, '2_1.JPEG: cannot read image', 'DATA.SKIP_BAD_IMAGES')
    assert 'while loading a batch' in line


# ---------------------------------------------------------------------------------------------- configs

CONFIG_CASES = {
    'unknown_key': ('MODEL:\n  CHANELS: [8, 16, 32, 64]\n', ['unknown config key MODEL.CHANELS']),
    'wrong_type': ('TRAIN:\n  BASE_LR: fast\n', ['TRAIN.BASE_LR expects float', "'fast'"]),
    'syntax': ('TRAIN:\n  BASE_LR: 0.1\n   NUM_EPOCHS: [1, 2\n', ['line ', 'yaml syntax error']),
    'missing_base': ('BASE: ["no_such_base.yaml"]\n', ['BASE file not found', 'no_such_base.yaml']),
    'partitions': ('MODEL:\n  HEIGHTS: [8, 4, 2, 1]\n  WIDTHS: [8, 4, 3, 1]\n',
                   ['MODEL.HEIGHTS[2] x MODEL.WIDTHS[2]', 'do', 'partitions']),
}


def test_bad_configs_give_one_line_naming_key_or_file_and_exit_code_2(tmp_path):
    """All five cases run at once, each as a user would start it."""
    processes = {}
    for name, (text, _) in CONFIG_CASES.items():
        path = tmp_path / f'{name}.yaml'
        path.write_text(f'BASE: ["{TINY}"]\n' + text if name != 'missing_base' else text)
        processes[name] = start_process(['main_single_gpu.py', '-cfg', str(path), '-data_path', str(tmp_path / 'demo'),
                                                       '-output', str(tmp_path / name)])
    for name, process in processes.items():
        code, _, err = finish_process(process)
        line = assert_one_error_line(code, err, *CONFIG_CASES[name][1])
        assert f'{name}.yaml' in line or name == 'partitions', line


def test_a_config_file_that_does_not_exist(tmp_path):
    code, _, err = finish_process(start_process(['main_single_gpu.py', '-cfg', str(tmp_path / 'nope.yaml')]))
    assert_one_error_line(code, err, 'config file not found', 'nope.yaml')


def test_a_bad_kernel_switch_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv('REPMLP_CPU_KERNELS', 'off')
    code, _, err = finish_process(start_process(['main_single_gpu.py', '-cfg', TINY, '-data_path',
                                                 str(tmp_path / 'demo'), '-output', str(tmp_path / 'run')]))
    assert_one_error_line(code, err, "REPMLP_CPU_KERNELS='off'", 'use 1')
    assert not (tmp_path / 'run').exists() and not (tmp_path / 'demo').exists()


# ---------------------------------------------------------------------------------------------- weights

def test_a_pytorch_file_from_the_command_line(tmp_path):
    torch_file = os.path.join(FIXTURES, 'official_small_train.pth')
    processes = [start_process(['main_single_gpu.py', '-cfg', TINY, flag, torch_file,
                                '-data_path', str(tmp_path / 'demo'), '-output', str(tmp_path / flag),
                                '-opts', 'TRAIN.NUM_EPOCHS', '1'])
                 for flag in ('-pretrained', '-resume')]
    for process in processes:
        code, _, err = finish_process(process)
        assert_one_error_line(code, err, 'official_small_train.pth is a PyTorch checkpoint',
                              'tools/convert_torch_weights.py')


# ---------------------------------------------------------------------------------------------- numbers

def in_process_trainer(tmp_path, criterion=None):
    """A Trainer of the tiny model with SAVE in tmp_path, and a list of 4 random batches as its loader."""
    config = tiny_config(tmp_path).clone()
    config.defrost()
    config.SAVE = str(tmp_path / 'run')
    config.REPORT_FREQ = 2
    config.freeze()
    os.makedirs(config.SAVE)
    logger = utils.setup_logger(config.SAVE)
    trainer = engine.build_trainer(config, logger, steps_per_epoch=4)
    if criterion is not None:
        trainer.criterion = criterion
    rng = np.random.default_rng(0)
    loader = [(paddle.to_tensor(rng.integers(0, 255, (2, 3, 32, 32), dtype=np.uint8)),
               paddle.to_tensor(rng.integers(0, 10, 2))) for _ in range(4)]
    return trainer, loader


def test_a_non_finite_loss_names_the_step_and_the_last_good_checkpoint(tmp_path):
    trainer, loader = in_process_trainer(tmp_path)
    criterion, calls = trainer.criterion, []

    def diverging(logits, targets):
        calls.append(1)
        loss = criterion(logits, targets)
        return loss * float('nan') if len(calls) == 3 else loss

    trainer.criterion = diverging
    good = engine.write_checkpoint(trainer, 1) or checkpoint.newest_checkpoint(trainer.config.SAVE)
    with pytest.raises(engine.TrainingDiverged) as error:
        engine.train_one_epoch(trainer, loader, epoch=1)
    message = str(error.value)
    assert 'epoch 2, batch 3' in message and 'nan' in message and good in message
    assert checkpoint.load_checkpoint(good)['epoch'] == 1


def test_a_non_finite_loss_before_any_checkpoint_says_so(tmp_path):
    # + inf, not * inf: the sign of the random logits' sum would make it -inf half of the time
    trainer, loader = in_process_trainer(tmp_path, lambda logits, labels: logits.sum() * 0.0 + float('inf'))
    with pytest.raises(engine.TrainingDiverged, match='epoch 1, batch 1: the loss is inf.*no checkpoint yet'):
        engine.train_one_epoch(trainer, loader, epoch=0)


def test_amp_skipped_steps_are_counted_and_logged_not_fatal(tmp_path, monkeypatch, caplog):
    """Paddle has no AMP on a CPU, so the float16 GradScaler's found-inf is simulated: its step() is replaced by
    one that marks steps 2 and 3 as skipped the way Paddle's does (`_cache_found_inf`), without updating."""
    trainer, loader = in_process_trainer(tmp_path)
    scaler = trainer.scaler
    scaler._enable = True  # what build_trainer makes for AMP float16 on a GPU
    steps = []

    def step(optimizer):
        steps.append(1)
        scaler._cache_found_inf = len(steps) in (2, 3)
        if not scaler._cache_found_inf:
            optimizer.step()

    monkeypatch.setattr(scaler, 'step', step)
    monkeypatch.setattr(scaler, 'update', lambda: None)
    monkeypatch.setattr(scaler, 'scale', lambda loss: loss)
    stats = engine.train_one_epoch(trainer, loader, epoch=0)
    assert len(steps) == 4 and stats['amp_skipped_steps'] == 2
    log = open(os.path.join(trainer.config.SAVE, 'log.txt'), encoding='utf-8').read()
    assert 'skipped 2 of 4 optimizer steps' in log


def test_a_fresh_run_into_a_folder_with_checkpoints_is_refused(tmp_path):
    """Its checkpoint-0001 would be pruned by the old run's higher epochs, and -resume auto would continue the old
    run: nothing may be lost silently, so the user chooses."""
    output = tmp_path / 'out'
    checkpoint.save_checkpoint(str(output), 3, **fake_checkpoint(5))
    (output / 'config.yaml').write_text('the old run\n')
    (output / 'log.txt').write_text('the old log\n')
    code, _, err = finish_process(start_process(['main_single_gpu.py', '-cfg', TINY,
                                                 '-data_path', str(tmp_path / 'demo'), '-output', str(output)]))
    assert_one_error_line(code, err, 'already holds the checkpoints of a run', 'checkpoint-0005.pdparams',
                          '-resume auto')
    assert (output / 'config.yaml').read_text() == 'the old run\n'
    assert (output / 'log.txt').read_text() == 'the old log\n'
