"""The official recipe against the official training code's fixtures (tests/fixtures/README.md): its LR schedule,
its default initialisation, and three whole training steps (loss, gradients, clipping, AdamW, BN statistics)."""

import json
import logging
import math
import os

import numpy as np
import paddle
import pytest

import engine
from config import build_arg_parser, get_config, update_config
from convert_torch_weights import read_torch_checkpoint, torch_to_paddle
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures')
OFFICIAL = os.path.join(ROOT, 'configs', 'recipes', 'official.yaml')


@pytest.fixture(scope='module')
def train_fixture():
    data = np.load(os.path.join(FIXTURES, 'official_train.npz'))
    return data, json.loads(str(data['meta']))


def recipe_config(tmp_path, meta):
    """The official recipe file with the fixture's model and run: batch 8 at the fixture's LRs (already scaled),
    resumed at the epoch of its first step."""
    model, recipe = meta['model'], meta['recipe']
    path = tmp_path / 'fixture_model.yaml'
    path.write_text(
        f"DATA:\n  IMAGE_SIZE: {recipe['image_size']}\nMODEL:\n  NUM_CLASSES: {model['num_class']}\n"
        f"  CHANNELS: {model['channels']}\n  HEIGHTS: {model['hs']}\n  WIDTHS: {model['ws']}\n"
        f"  NUM_BLOCKS: {model['num_blocks']}\n  REPARAM_CONV_K: {model['reparam_conv_k']}\n"
        f"  SHARESETS_NUMS: {model['sharesets_nums']}\n")
    first_epoch = meta['first_step'] // recipe['steps_per_epoch']
    args = build_arg_parser('test').parse_args(
        ['-cfg', str(path), OFFICIAL, '-batch_size', str(recipe['batch']), '-last_epoch', str(first_epoch),
         '-opts', 'TRAIN.LR_REFERENCE_BATCH', str(recipe['batch'])])
    return update_config(get_config(), args)


def test_official_schedule_equals_the_official_code(train_fixture):
    """8 processes x 32 images (global batch 256, the recipe's reference), 100 epochs of 5 steps: all 500 LRs."""
    data, meta = train_fixture
    config = get_config(OFFICIAL)
    steps_per_epoch = meta['recipe']['steps_per_epoch']
    schedule = engine.build_lr_scheduler(config, engine.learning_rates(config, world_size=8), steps_per_epoch)
    lrs = []
    for _ in range(len(data['schedule'])):
        lrs.append(schedule.get_lr())
        schedule.step()
    np.testing.assert_allclose(lrs, data['schedule'], rtol=0, atol=1e-9)


def test_official_schedule_with_accumulation_counts_batches():
    """main_repmlp.py steps timm's scheduler with the batch index of each update: with 2 batches per update, update
    n uses the value of batch 2n - 1, the cosine and warmup counted in batches."""
    config = get_config(OFFICIAL)
    lrs = engine.learning_rates(config, world_size=8)
    schedule = engine.OfficialCosineLR(lrs['base_lr'], lrs['warmup_start_lr'], lrs['end_lr'], warmup_steps=50,
                                       total_steps=500, accum_iter=2, last_epoch=300 - 1)
    batch, base = 2 * 300 - 1, lrs['base_lr']
    assert schedule.get_lr() == pytest.approx(0.5 * base * (1 + math.cos(math.pi * batch / 1000)), rel=1e-12)


def test_paddlevit_schedule_keeps_its_cosine_over_the_steps_after_warmup():
    config = get_config(os.path.join(ROOT, 'configs', 'recipes', 'paddlevit.yaml'))
    lrs = engine.learning_rates(config, world_size=16)  # 16 x 32 = 512, the recipe's reference batch
    schedule = engine.build_lr_scheduler(config, lrs, steps_per_epoch=2)
    values = []
    for _ in range(600):
        values.append(schedule.get_lr())
        schedule.step()
    assert values[40] == pytest.approx(1e-3)  # the peak right after 20 epochs of warmup
    assert values[40 + 280] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way through the remaining 280 epochs


def test_fresh_model_has_the_official_default_initialisation():
    """Every parameter of 1000 or more values of a B224: std within 5% of the official model's, and the values
    uniform like PyTorch's (the largest |w| within 3% of sqrt(3) x the official std, the uniform's bound); BN
    weights and biases constant as the official ones."""
    reference = np.load(os.path.join(FIXTURES, 'official_init_b224.npz'))
    paddle.seed(0)
    model = build_repmlp(get_config(os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml')))
    state = model.state_dict()
    assert sorted(name for name, param in model.named_parameters() if not param.stop_gradient) == sorted(
        key[4:] for key in reference.files if key.startswith('std/'))
    for key in reference.files:
        if not key.startswith('std/') or int(reference['numel/' + key[4:]]) < 1000:
            continue
        name = key[4:]
        values = state[name].numpy()
        official_std, official_max = float(reference[key]), float(reference['absmax/' + name])
        if official_std == 0:
            assert np.all(np.abs(values) == official_max), name
            continue
        assert values.std() == pytest.approx(official_std, rel=0.05), name
        bound = math.sqrt(3) * official_std
        assert 0.97 * bound <= np.abs(values).max() <= 1.03 * bound, name


def test_initialisation_follows_the_seed():
    config = get_config(os.path.join(ROOT, 'configs', 'demo.yaml'))
    weights = []
    for seed in (1, 1, 2):
        paddle.seed(seed)
        weights.append(build_repmlp(config).head.weight.numpy())
    assert np.array_equal(weights[0], weights[1]) and not np.array_equal(weights[0], weights[2])


MOMENTS = {'exp_avg': 'moment1', 'exp_avg_sq': 'moment2'}  # PyTorch's AdamW state names -> Paddle's accumulators
BN_MOMENTUM = 0.9  # the weight of the old running statistics (PyTorch's momentum 0.1), the same in both


def batch_norm_counts(model):
    """{BN name: values per channel in its last batch}, recorded by forward hooks (the n of n/(n-1))."""
    counts, hooks = {}, []
    for name, layer in model.named_sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            def record(layer, inputs, name=name):
                counts[name] = inputs[0].size // inputs[0].shape[1]
            hooks.append(layer.register_forward_pre_hook(record))
    return counts


def test_three_training_steps_equal_the_official_code(tmp_path, train_fixture):
    """From official_train_init.pth (converted), the project's own step three times on the fixture's batches."""
    paddle.set_device('cpu')
    data, meta = train_fixture
    config = recipe_config(tmp_path, meta)
    trainer = engine.build_trainer(config, logging.getLogger('test_official_recipe'),
                                   steps_per_epoch=meta['recipe']['steps_per_epoch'])
    model = trainer.raw_model
    linear = {f'{name}.weight' for name, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    init = torch_to_paddle(read_torch_checkpoint(os.path.join(FIXTURES, 'official_train_init.pth')), linear)
    after = torch_to_paddle(read_torch_checkpoint(os.path.join(FIXTURES, 'official_train_after.pth')), linear)
    model.set_state_dict(init)
    model.train()
    counts = batch_norm_counts(model)
    params = {name: param for name, param in model.named_parameters() if not param.stop_gradient}
    assert sorted(params) == sorted(meta['parameters'])
    for k in range(meta['num_steps']):
        assert trainer.optimizer.get_lr() == pytest.approx(float(data[f'lr_{k}']), rel=1e-9)
        images, targets = paddle.to_tensor(data[f'images_{k}']), paddle.to_tensor(data[f'targets_{k}'])
        loss = engine._forward_backward(trainer, images, targets, is_update=True)
        grad_norm = math.sqrt(sum(float((p.grad.astype('float64') ** 2).sum()) for p in params.values()))
        assert loss == pytest.approx(float(data[f'loss_{k}']), rel=1e-5), k
        assert grad_norm == pytest.approx(float(data[f'grad_norm_{k}']), rel=1e-5), k
        engine._optimizer_step(trainer)

    official_moments = {}
    for moment, accumulator in MOMENTS.items():
        official = {name: data[f'{moment}/{name}'].T if name in linear else data[f'{moment}/{name}'] for name in params}
        largest = max(np.abs(value).max() for value in official.values())
        for name, param in params.items():
            ours = trainer.optimizer._accumulators[accumulator][param.name].numpy()
            np.testing.assert_allclose(ours, official[name], rtol=0, atol=1e-4 * largest, err_msg=f'{moment} {name}')
        official_moments[moment] = (official, largest)

    state = model.state_dict()
    first_moments, largest_first = official_moments['exp_avg']
    for name in params:
        # parameters whose gradient is rounding noise (e.g. prebn2.bias) take noise-driven steps: see the moments
        if np.abs(first_moments[name]).max() < 1e-3 * largest_first:
            continue
        update = np.abs(after[name] - init[name]).max()
        assert np.abs(state[name].numpy() - after[name]).max() <= 0.02 * update, name
    assert_running_statistics_match(state, init, after, counts, meta['num_steps'])


def assert_running_statistics_match(state, init, after, counts, steps):
    """Running variances within 1e-4 relative once the official n / (n - 1) is applied: PyTorch adds the unbiased
    batch variance to them, Paddle the biased one (n values per channel in the batch; 1.14x at n = 8).

    Running means within 1e-3 of the largest running mean of all BNs (7.9e-4 measured): the noise-driven biases
    (prebn2.bias, ffn_fc2.bn.bias, see the fixture README) step by about +-LR on each side and shift the residual
    stream, whose means the later BNs record; the mean of ffn_fc1's output is zero in exact arithmetic.
    """
    means = {name: value for name, value in after.items() if name.endswith('._mean')}
    largest_mean = max(np.abs(value).max() for value in means.values())
    for name, official in means.items():
        np.testing.assert_allclose(state[name].numpy(), official, rtol=0, atol=1e-3 * largest_mean, err_msg=name)
    for name, official in after.items():
        layer, _, statistic = name.rpartition('.')
        if statistic == '_variance':
            kept = BN_MOMENTUM ** steps * init[name]  # what is left of the starting value
            n = counts[layer]
            unbiased = kept + (state[name].numpy() - kept) * n / (n - 1)
            np.testing.assert_allclose(unbiased, official, rtol=1e-4, err_msg=name)
