"""engine.py and the entry points on the CPU: the tiny model of tests/configs/tiny_demo.yaml on the demo data.

Runs go through main_single_gpu.py / main_multi_gpu.py as a user starts them, in their own process group,
with a timeout that kills the whole group, so a stuck collective fails the test instead of hanging CI.
"""

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import paddle
import pytest

import engine
import transforms
from config import get_config
from helpers import assert_same_checkpoint, finish_process, start_process, wait_for
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')
EPOCHS = 8
CHANCE = 1 / 6  # the demo data has six classes


def run(script, args, timeout=240, threads='1'):
    """Run `script` with `args`; returns (exit code, stdout + stderr). Kills its process group on timeout."""
    code, out, err = finish_process(start_process([os.path.join(ROOT, script)] + args, threads), timeout)
    return code, out + err


def train_args(data_path, output, *opts):
    return ['-cfg', TINY, '-data_path', data_path, '-output', output, '-opts', *opts]


def epochs(output):
    with open(os.path.join(output, 'log.jsonl'), encoding='utf-8') as file:
        return [json.loads(line) for line in file]


@pytest.fixture(scope='session')
def demo_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp('data') / 'demo')


@pytest.fixture(scope='session')
def trained(demo_path, tmp_path_factory):
    """An EPOCHS-long single-process run with EMA; its output folder."""
    output = str(tmp_path_factory.mktemp('trained'))
    code, log = run('main_single_gpu.py', train_args(demo_path, output, 'TRAIN.NUM_EPOCHS', str(EPOCHS),
                                                     'TRAIN.MODEL_EMA', 'True', 'TRAIN.MODEL_EMA_DECAY', '0.9',
                                                     'KEEP_LAST', '2'), threads='2')
    assert code == 0, log[-3000:]
    return output


# ------------------------------------------------------------------------------------------ unit tests

def test_learning_rates_scale_with_the_effective_batch():
    config = get_config(os.path.join(ROOT, 'configs', 'recipes', 'official.yaml'))
    lrs = engine.learning_rates(config, world_size=8)  # 8 x 32 images, the official set-up
    assert lrs['effective_batch'] == 256 and lrs['base_lr'] == pytest.approx(1e-3)
    assert lrs['warmup_start_lr'] == pytest.approx(5e-7) and lrs['end_lr'] == 0.0
    assert engine.learning_rates(config, world_size=4)['base_lr'] == pytest.approx(5e-4)


def test_schedule_resumes_at_last_epoch():
    config = get_config(TINY)
    config.defrost()
    config.TRAIN.LAST_EPOCH = 2
    schedule = engine.build_lr_scheduler(config, engine.learning_rates(config, 1), steps_per_epoch=7)
    assert schedule.last_epoch == 14


def test_weight_decay_skips_batch_norm_and_biases():
    paddle.set_device('cpu')
    config = get_config(TINY)
    model = build_repmlp(config)
    skipped = engine.no_decay_names(model)
    for name, param in model.named_parameters():
        if not param.stop_gradient:
            assert (name in skipped) == (len(param.shape) == 1), name  # BN scales/shifts and biases are the 1-D ones
    lr, decay = 0.5, config.TRAIN.WEIGHT_DECAY
    optimizer = engine.build_optimizer(config, model, lr)
    trained = {name: param for name, param in model.named_parameters() if not param.stop_gradient}
    before = {name: param.numpy().copy() for name, param in trained.items()}
    model.eval()  # keep the BN statistics fixed; only the optimizer may change anything
    # zero gradients: AdamW's update is then exactly the decay, param * (1 - lr * decay), or nothing
    (model(paddle.zeros([2, 3, 32, 32])).sum() * 0).backward()
    optimizer.step()
    for name, param in trained.items():
        factor = 1.0 if name in skipped else 1 - lr * decay
        np.testing.assert_allclose(param.numpy(), before[name] * factor, rtol=1e-6, atol=1e-7, err_msg=name)


def tiny_trainer(tmp_path, accum_iter=1):
    """A Trainer of tests/configs/tiny_demo.yaml (no Mixup, label smoothing 0.1) that logs nowhere."""
    config = get_config(TINY)
    config.defrost()
    config.SAVE, config.TRAIN.ACCUM_ITER = str(tmp_path), accum_iter
    return engine.build_trainer(config, logging.getLogger('tiny_trainer'), steps_per_epoch=4)


def random_batches(sizes, seed=0):
    """uint8 image batches [n, 3, 32, 32] and labels in [0, 6), one per entry of `sizes`."""
    rng = np.random.default_rng(seed)
    return [(paddle.to_tensor(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)),
             paddle.to_tensor(rng.integers(0, 6, n))) for n in sizes]


def test_validate_counts_every_image_of_every_batch(tmp_path):
    """Batches of 4, 4 and 2 images: top-1, top-5 and the loss against numpy on the logits of all 10 at once."""
    trainer = tiny_trainer(tmp_path)
    model, batches = trainer.raw_model, random_batches([4, 4, 2])
    metrics = engine.validate(model, batches, trainer.config, trainer.logger)
    with paddle.no_grad():
        logits = np.concatenate([model(transforms.normalize(images, trainer.config)).numpy() for images, _ in batches])
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    ranks = (logits > logits[np.arange(10), labels][:, None]).sum(1)  # how many classes score above the label
    assert metrics['num_images'] == 10
    assert metrics['acc1'] == np.mean(ranks == 0) and metrics['acc5'] == np.mean(ranks < 5)
    assert metrics['loss'] == pytest.approx(-log_softmax[np.arange(10), labels].mean(), rel=1e-5)


def test_accumulated_gradients_are_those_of_the_mean_loss(tmp_path):
    """ACCUM_ITER 2: the gradients after two batches equal those of (loss 1 + loss 2) / 2 on a copy of the model."""
    trainer = tiny_trainer(tmp_path, accum_iter=2)
    copy = build_repmlp(trainer.config)
    copy.set_state_dict(trainer.raw_model.state_dict())
    copy.train()
    trainer.model.train()
    batches = [(transforms.normalize(images, trainer.config), labels) for images, labels in random_batches([4, 4])]
    for index, (images, labels) in enumerate(batches):
        engine._forward_backward(trainer, images, labels, is_update=index == 1)
    mean_loss = sum(trainer.criterion(copy(images), labels) for images, labels in batches) / 2
    mean_loss.backward()
    copies = dict(copy.named_parameters())
    for name, param in trainer.raw_model.named_parameters():
        if param.grad is not None:
            expected = copies[name].grad.numpy()
            np.testing.assert_allclose(param.grad.numpy(), expected, rtol=1e-4,
                                       atol=1e-6 * np.abs(expected).max(), err_msg=name)


def test_an_epoch_uses_whole_accumulation_groups_only(tmp_path):
    """5 batches at ACCUM_ITER 2: batches 1-4 make 2 optimizer steps; the 5th, whose group is incomplete, is left."""
    trainer = tiny_trainer(tmp_path, accum_iter=2)
    criterion, calls = trainer.criterion, []
    trainer.criterion = lambda logits, targets: calls.append(len(targets)) or criterion(logits, targets)
    before = trainer.lr_scheduler.last_epoch
    engine.train_one_epoch(trainer, random_batches([4, 4, 4, 4, 3]), epoch=0)
    assert calls == [4, 4, 4, 4] and trainer.lr_scheduler.last_epoch == before + 2


# ------------------------------------------------------------------------------------------ runs

def test_training_lowers_the_loss_and_learns(trained):
    stats = epochs(trained)
    assert [s['epoch'] for s in stats] == list(range(1, EPOCHS + 1))
    losses = [s['train_loss'] for s in stats]
    print('demo loss curve:', [round(loss, 4) for loss in losses], 'val acc1:', [s['val_acc1'] for s in stats])
    assert losses[-1] < losses[0] - 0.2
    assert stats[-1]["val_acc1"] > CHANCE + 0.15
    assert sorted(name for name in os.listdir(trained) if name.endswith('.pdparams')) == [
        'best.pdparams', 'best_ema.pdparams', f'checkpoint-{EPOCHS - 1:04d}.pdparams',
        f'checkpoint-{EPOCHS:04d}.pdparams']
    assert os.path.isfile(os.path.join(trained, 'config.yaml')) and os.path.isfile(os.path.join(trained, 'log.txt'))


def test_resume_gives_the_same_result_as_not_stopping(trained, demo_path, tmp_path):
    """Continue from the checkpoint of epoch N-1 of the straight run; epoch N must come out identical."""
    resumed = str(tmp_path)
    shutil.copy(os.path.join(trained, f'checkpoint-{EPOCHS - 1:04d}.pdparams'), resumed)
    code, log = run('main_single_gpu.py', ['-resume', 'auto'] + train_args(
        demo_path, resumed, 'TRAIN.NUM_EPOCHS', str(EPOCHS), 'TRAIN.MODEL_EMA', 'True', 'TRAIN.MODEL_EMA_DECAY', '0.9',
        'KEEP_LAST', '2'), threads='2')
    assert code == 0, log[-3000:]
    assert f'after epoch {EPOCHS - 1}' in log
    straight = os.path.join(trained, f'checkpoint-{EPOCHS:04d}.pdparams')
    keys = engine.flatten(paddle.load(straight), '/')
    assert any(key.startswith('optimizer/') for key in keys) and any(key.startswith('ema/') for key in keys)
    assert_same_checkpoint(straight, os.path.join(resumed, f'checkpoint-{EPOCHS:04d}.pdparams'))
    for key in ('train_loss', 'lr', 'val_acc1', 'val_loss', 'ema_acc1', 'best_val_acc1'):
        assert epochs(resumed)[-1][key] == epochs(trained)[-1][key], key


@pytest.mark.slow
def test_resume_with_another_schedule_is_refused_unless_meant(trained, demo_path, tmp_path):
    """More epochs and another warmup would change every later step's LR: refused with the differences, the
    folder's config.yaml kept; with -new_schedule the run continues on the new schedule."""
    resumed = str(tmp_path)
    shutil.copy(os.path.join(trained, f'checkpoint-{EPOCHS:04d}.pdparams'), resumed)
    changed = train_args(demo_path, resumed, 'TRAIN.NUM_EPOCHS', str(EPOCHS + 1), 'TRAIN.WARMUP_EPOCHS', '2',
                         'TRAIN.MODEL_EMA', 'True', 'TRAIN.MODEL_EMA_DECAY', '0.9')
    code, out, err = finish_process(start_process(['main_single_gpu.py', '-resume', 'auto'] + changed))
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1, err[-3000:]
    assert f'TRAIN.NUM_EPOCHS {EPOCHS} -> {EPOCHS + 1}, TRAIN.WARMUP_EPOCHS 1 -> 2' in errors[0]
    assert '-new_schedule' in errors[0] and not os.path.exists(os.path.join(resumed, 'config.yaml'))
    code, out, err = finish_process(start_process(['main_single_gpu.py', '-resume', 'auto', '-new_schedule']
                                                  + changed))
    assert code == 0 and f'finished {EPOCHS + 1} epochs' in out, (out + err)[-3000:]


@pytest.mark.slow
def test_two_ranks_equal_one_process_averaging_their_gradients(tmp_path):
    code, log = run(os.path.join('tests', 'two_rank_step.py'), [str(tmp_path), 'ranks'], timeout=180)
    assert code == 0, log[-3000:]
    code, log = run(os.path.join('tests', 'two_rank_step.py'), [str(tmp_path), 'single'], timeout=120)
    assert code == 0, log[-3000:]
    rank0, rank1, single = (np.load(tmp_path / f'{name}.npz') for name in ('rank0', 'rank1', 'single'))
    assert float(single['moved']) > 1e-3  # the step really changed the weights
    names = [name for name in single.files if name != 'moved']
    for name in names:
        np.testing.assert_array_equal(rank0[name], rank1[name], err_msg=name)
    difference = max(float(np.abs(rank0[name] - single[name]).max()) for name in names)
    print('largest difference, 2 ranks vs 1 process:', difference)
    assert difference < 1e-5


def test_multi_process_training_keeps_ranks_in_sync(demo_path, tmp_path):
    output = str(tmp_path)
    code, log = run('main_multi_gpu.py', ['-nprocs', '2'] + train_args(demo_path, output, 'TRAIN.NUM_EPOCHS', '1'))
    assert code == 0, log[-3000:]
    stats = epochs(output)
    assert len(stats) == 1  # the ranks' parameters were compared after the epoch (a difference stops the run)
    for noise in ('Modified FLAGS', 'CPUONLY mode', 'ccache', 'tcp_utils', 'Traceback'):
        assert noise not in log, noise
    assert os.path.isfile(os.path.join(output, 'log_rank1.txt'))
    assert os.path.isfile(os.path.join(output, 'checkpoint-0001.pdparams'))


@pytest.mark.parametrize('fault, message', [
    ('weights', "before epoch 1, the parameters of rank(s) 1 differ from rank 0's (1 of 108, e.g. head.bias)"),
    pytest.param('config', "rank 1 runs another config than rank 0: TRAIN.NUM_EPOCHS is 2 there and 1 on rank 0",
                 marks=pytest.mark.slow),
    pytest.param('checkpoint', 'rank 1 finds ', marks=pytest.mark.slow),
])
def test_ranks_that_disagree_stop_with_one_line(demo_path, tmp_path, fault, message):
    """Rank 1 differs from rank 0 (tests/rank_faults.py): the job stops before training, every rank exits 2,
    and only rank 0 prints the reason."""
    code, out, err = finish_process(start_process([os.path.join('tests', 'rank_faults.py'), fault, str(tmp_path),
                                                   demo_path]), timeout=180)
    errors = [line for line in err.splitlines() if line.startswith('error:')]
    assert code == 2 and len(errors) == 1, (out + err)[-3000:]
    assert message in errors[0], errors[0]
    assert not os.path.exists(tmp_path / 'checkpoint-0001.pdparams')


@pytest.mark.slow
def test_eval_counts_every_image_once_for_any_process_count(trained, demo_path, tmp_path):
    """97 images (prime): no batch size (16) and no process count (2, 3) divides it."""
    data = tmp_path / 'data'
    data.mkdir()
    os.symlink(os.path.join(demo_path, 'val'), data / 'val')
    with open(os.path.join(demo_path, 'val_list.txt'), encoding='utf-8') as file:
        lines = file.read().splitlines()[:97]
    (data / 'val_list.txt').write_text('\n'.join(lines) + '\n')
    weights = os.path.join(trained, 'best.pdparams')
    results = []
    for nprocs in (1, 2, 3):
        output = str(tmp_path / f'eval{nprocs}')
        args = ['-cfg', TINY, '-eval', '-pretrained', weights, '-data_path', str(data), '-output', output,
                '-batch_size_eval', '16']
        script = 'main_single_gpu.py' if nprocs == 1 else 'main_multi_gpu.py'
        code, log = run(script, args if nprocs == 1 else ['-nprocs', str(nprocs)] + args)
        assert code == 0, log[-3000:]
        with open(os.path.join(output, 'metrics.json'), encoding='utf-8') as file:
            results.append(json.load(file))
    print('eval with 1, 2, 3 processes:', results)
    for metrics in results:
        assert metrics['num_images'] == 97
        assert metrics['acc1'] == results[0]['acc1'] and metrics['acc5'] == results[0]['acc5']
        assert metrics['loss'] == pytest.approx(results[0]['loss'], rel=1e-6)
        assert math.isclose(metrics['acc1'] * 97, round(metrics['acc1'] * 97))


def test_amp_and_mixup_run(demo_path, tmp_path):
    code, log = run('main_single_gpu.py', ['-amp', '-accum_iter', '2'] + train_args(
        demo_path, str(tmp_path), 'TRAIN.NUM_EPOCHS', '1', 'AUG.MIXUP', '0.4', 'AUG.CUTMIX', '1.0'), threads='2')
    assert code == 0, log[-3000:]
    assert 'AMP off (Paddle has no AMP on a CPU)' in log or 'AMP on' in log
    assert math.isfinite(epochs(str(tmp_path))[0]['train_loss'])


def test_non_finite_loss_stops_with_a_clear_message(demo_path, tmp_path):
    code, log = run('main_single_gpu.py', train_args(demo_path, str(tmp_path), 'TRAIN.BASE_LR', '1e9',
                                                     'TRAIN.WARMUP_EPOCHS', '0'), threads='2')
    assert code == 2
    assert 'error: epoch 1, batch' in log and 'the loss is' in log and 'Traceback' not in log
    assert not [name for name in os.listdir(tmp_path) if name.startswith('checkpoint-')]


def test_a_dead_rank_ends_the_job_with_an_error(demo_path, tmp_path):
    """Kill rank 1 in the middle of training: the launcher must stop rank 0 and exit non-zero, not hang."""
    output = str(tmp_path)
    args = ['-nprocs', '2'] + train_args(demo_path, output, 'TRAIN.NUM_EPOCHS', '50', 'REPORT_FREQ', '1')
    process = subprocess.Popen([sys.executable, os.path.join(ROOT, 'main_multi_gpu.py')] + args, cwd=ROOT,
                               env={**os.environ, 'OMP_NUM_THREADS': '1'}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        rank_log = os.path.join(output, 'log_rank1.txt')
        wait_for(rank_log, 'Epoch 1/', process)
        pid = int(re.search(r'\(pid (\d+)\)', open(rank_log, encoding='utf-8').read()).group(1))
        os.kill(pid, signal.SIGKILL)
        _, errors = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        pytest.fail('the job hung after a rank died')
    assert process.returncode != 0
    lines = [line for line in errors.splitlines() if line.startswith('error:')]
    assert lines == ['error: rank 1 failed (signal SIGKILL), the job was stopped'], errors[-3000:]


def test_a_fraction_above_the_peak_is_marked_as_a_measurement_error():
    import benchmark
    errors = []
    assert benchmark.fraction_of_peak(0.654, errors) == '65.4%' and errors == []
    assert benchmark.fraction_of_peak(2.448, errors) == 'error*' and errors == [2.448]
    assert benchmark.MEASUREMENT_ERROR.startswith('* above 100% of the peak')


def test_a_progress_line_comes_at_least_every_progress_seconds(tmp_path, monkeypatch):
    """With REPORT_FREQ beyond the epoch, slow steps still log: here every step, with PROGRESS_SECONDS 0. Only the
    lines that every rank writes at the same step (REPORT_FREQ, the last) reduce the loss over ranks: a line due to
    the clock alone must not start a collective that the other ranks do not."""
    monkeypatch.setattr(engine, 'PROGRESS_SECONDS', 0)
    reductions = []
    monkeypatch.setattr(engine.utils, 'all_reduce_sum', lambda values: reductions.append(values) or values)
    config = get_config(TINY)
    config.defrost()
    config.REPORT_FREQ, config.SAVE = 1000, str(tmp_path)
    messages = []
    logger = logging.getLogger('progress_test')
    logger.addHandler(type('Collect', (logging.Handler,), {'emit': lambda self, record: messages.append(
        record.getMessage())})())
    logger.setLevel(logging.INFO)
    trainer = engine.build_trainer(config, logger, steps_per_epoch=3)
    loader = [(paddle.randint(0, 256, [4, 3, 32, 32]).astype('uint8'), paddle.randint(0, 6, [4]))] * 3
    engine.train_one_epoch(trainer, loader, epoch=0)
    assert [m.split(' loss')[0] for m in messages if m.startswith('Epoch')] == [
        'Epoch 1/8 [1/3]', 'Epoch 1/8 [2/3]', 'Epoch 1/8 [3/3]']
    assert len(reductions) == 2  # the last step's line and the epoch's mean


@pytest.mark.slow
def test_benchmark_train_times_both_fc3_forms(capsys):
    """tools/benchmark.py train: one row per fc3 form, each with its rate, peak, fraction and memory."""
    import benchmark
    from inference import count_macs
    assert benchmark.main(['train', '-cfg', TINY, '-batch_size', '4', '-repeats', '1']) == 0
    out = capsys.readouterr().out
    assert 'cores' in out.splitlines()[0] and 'matmul (the peak)' in out
    config = get_config(TINY)
    step_flops = 2 * 3 * count_macs(build_repmlp(config), config.DATA.IMAGE_SIZE)
    for form in ('batched matmul (ours)', 'grouped 1x1 conv'):
        row = next(line for line in out.splitlines() if line.startswith(form))
        rate, peak, fraction, tensors, rss = map(float, row[len(form):].replace('%', '').split()[1:])  # after AMP
        assert rate > 0 and peak > 0 and 0 < tensors < rss
        # one timed step: its fraction is its rate against the peak timed just before it, to the printed digits
        # (rate 0.01, peak 1 GFLOP/s, fraction 0.1%: on a loaded machine the peak can be a few GFLOP/s)
        lowest = 100 * (rate - 0.005) * step_flops / 1e9 / (peak + 0.5) - 0.05
        highest = 100 * (rate + 0.005) * step_flops / 1e9 / max(peak - 0.5, 1e-9) + 0.05
        assert lowest <= fraction <= highest


@pytest.mark.parametrize('bound', [0.01, 1e6], ids=['clipping', 'within-bound'])
def test_global_norm_clip_steps_as_paddles_clip(bound):
    """GlobalNormClip (one-pass norm, no multiply within the bound) against Paddle's ClipGradByGlobalNorm."""
    def train(clip):
        paddle.seed(0)
        model = paddle.nn.Sequential(paddle.nn.Linear(64, 300), paddle.nn.ReLU(), paddle.nn.Linear(300, 10))
        model[0].bias.need_clip = False  # excluded from the norm and from the clipping, as in Paddle
        optimizer = paddle.optimizer.AdamW(parameters=model.parameters(), learning_rate=0.1, grad_clip=clip)
        for _ in range(3):
            (model(paddle.randn([16, 64])).square().mean() * 100).backward()
            optimizer.step()
            optimizer.clear_grad()
        return np.concatenate([param.numpy().ravel() for param in model.parameters()])
    expected = train(paddle.nn.ClipGradByGlobalNorm(bound))
    np.testing.assert_allclose(train(engine.GlobalNormClip(bound)), expected, rtol=0, atol=1e-6)
