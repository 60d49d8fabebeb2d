"""Transfer: fine-tuning to other classes (-finetune), frozen stages, the backbone LR, other resolutions, and
RepMLPNet as a backbone."""

import logging
import os
import subprocess
import sys

import numpy as np
import paddle
import pytest

import checkpoint
import datasets
import engine
import make_list_files
import make_shapes_dataset
from config import ConfigError, build_arg_parser, get_config, update_config
from helpers import randomize_batchnorms, relative_error, tiny_config
from repmlp import build_repmlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LOGGER = logging.getLogger('test_transfer')
NO_MIXUP = """AUG:
  MIXUP: 0.0
  CUTMIX: 0.0
"""


@pytest.fixture
def imagenet_weights(tmp_path):
    """A 1000-class tiny model's weights (BN statistics non-trivial), saved as a .pdparams file."""
    (tmp_path / 'source').mkdir()
    config = tiny_config(tmp_path / 'source')
    config.defrost()
    config.MODEL.NUM_CLASSES = 1000
    paddle.seed(1)
    model = randomize_batchnorms(build_repmlp(config), paddle.randn([4, 3, 32, 32]))
    path = str(tmp_path / 'imagenet.pdparams')
    paddle.save(model.state_dict(), path)
    return path


def finetune_config(tmp_path, weights, extra=''):
    """The tiny model at 5 classes, fine-tuning from `weights`, without Mixup; `extra` yaml lines under TRAIN."""
    config = tiny_config(tmp_path, NO_MIXUP + ('TRAIN:\n' + extra if extra else ''))
    config.defrost()
    config.MODEL.NUM_CLASSES = 5
    config.MODEL.PRETRAINED = weights
    config.MODEL.FINETUNE = True
    config.TRAIN.NUM_EPOCHS = 2
    config.TRAIN.WARMUP_EPOCHS = 0
    config.TRAIN.BASE_LR = 0.01
    config.TRAIN.LR_REFERENCE_BATCH = config.DATA.BATCH_SIZE = 8
    config.freeze()
    return config


def fixed_batches(count, seed=0):
    """`count` copies of one batch of 8 uint8 images and labels in [0, 5), as train_one_epoch iterates them."""
    rng = np.random.default_rng(seed)
    images = paddle.to_tensor(rng.integers(0, 256, (8, 3, 32, 32), dtype=np.uint8))
    labels = paddle.to_tensor(np.arange(8) % 5, dtype='int64')
    return [(images, labels)] * count


def snapshot(layer):
    return {name: value.numpy().copy() for name, value in layer.state_dict().items()}


# ---------------------------------------------------------------------------------------- fine-tuning

def test_finetune_loads_all_but_the_head_and_trains(tmp_path, imagenet_weights):
    config = finetune_config(tmp_path, imagenet_weights)
    trainer = engine.build_trainer(config, LOGGER, steps_per_epoch=6)
    model, source = trainer.raw_model, paddle.load(imagenet_weights)
    for name, value in model.state_dict().items():
        if name.startswith('head.'):
            assert value.shape[-1] == 5, name
        else:
            np.testing.assert_array_equal(value.numpy(), source[name], err_msg=name)
    losses = [engine.train_one_epoch(trainer, fixed_batches(6), epoch)['train_loss'] for epoch in range(2)]
    assert all(np.isfinite(losses)) and losses[1] < losses[0]


def test_finetune_says_what_it_left_out(tmp_path, imagenet_weights, caplog):
    config = finetune_config(tmp_path, imagenet_weights)
    left_out = checkpoint.load_weights_except_head(build_repmlp(config), imagenet_weights)
    assert [name for name, _ in left_out] == ['head.bias', 'head.weight']
    assert 'file [64, 1000], model [64, 5]' in dict(left_out)['head.weight']
    logger = logging.getLogger('test_transfer.log')
    with caplog.at_level(logging.INFO, logger='test_transfer.log'):
        engine.load_pretrained(config, build_repmlp(config), logger)
    assert 'left out head.bias' in caplog.text and 'head.weight (new classifier' in caplog.text


def test_a_mismatch_other_than_the_head_still_fails(tmp_path, imagenet_weights):
    config = finetune_config(tmp_path, imagenet_weights)
    state = paddle.load(imagenet_weights)
    del state['stages.0.0.prebn1.weight']
    state['stages.3.0.repmlp_block.fc3.weight'] = np.zeros([9, 1, 1, 1], dtype='float32')
    broken = str(tmp_path / 'broken.pdparams')
    paddle.save(state, broken)
    with pytest.raises(checkpoint.CheckpointError, match=r'1 missing: stages\.0\.0\.prebn1\.weight; 1 with another shape'):
        checkpoint.load_weights_except_head(build_repmlp(config), broken)
    deploy = build_repmlp(config).locality_injection()
    deploy_file = str(tmp_path / 'deploy.pdparams')
    paddle.save(deploy.state_dict(), deploy_file)
    with pytest.raises(checkpoint.CheckpointError, match='deploy-form weights'):
        checkpoint.load_weights_except_head(build_repmlp(config), deploy_file)
    strict = finetune_config(tmp_path, imagenet_weights).clone()
    strict.defrost()
    strict.MODEL.FINETUNE = False
    with pytest.raises(checkpoint.CheckpointError, match=r'only the classifier differs.*or add -finetune'):
        engine.build_trainer(strict, LOGGER, steps_per_epoch=1)


def test_finetune_flag_and_its_checks():
    parser = build_arg_parser('test')
    config = update_config(get_config(), parser.parse_args(['-pretrained', 'w.pdparams', '-finetune']))
    assert config.MODEL.FINETUNE and config.MODEL.PRETRAINED == 'w.pdparams'
    with pytest.raises(ConfigError, match='-finetune .* needs the weights'):
        update_config(get_config(), parser.parse_args(['-finetune']))
    for opts, message in ((['TRAIN.FREEZE_STAGES', '5'], r'FREEZE_STAGES must be in \[0, 4\]'),
                          (['TRAIN.BACKBONE_LR_SCALE', '-1'], 'BACKBONE_LR_SCALE must be 0 or more')):
        with pytest.raises(ConfigError, match=message):
            update_config(get_config(), parser.parse_args(['-opts'] + opts))


# ------------------------------------------------------------------------------ frozen stages, backbone LR

def test_frozen_stages_and_their_bn_statistics_do_not_change(tmp_path, imagenet_weights):
    config = finetune_config(tmp_path, imagenet_weights, '  FREEZE_STAGES: 2\n')
    trainer = engine.build_trainer(config, LOGGER, steps_per_epoch=2)
    model = trainer.raw_model
    frozen = [model.conv_embedding, model.stages[0], model.embeds[0], model.stages[1]]
    trained = [model.embeds[1], model.stages[2], model.embeds[2], model.stages[3], model.head_norm, model.head]
    before = [snapshot(layer) for layer in frozen + trained]
    engine.train_one_epoch(trainer, fixed_batches(2), epoch=0)
    after = [snapshot(layer) for layer in frozen + trained]
    for layer_before, layer_after in zip(before[:len(frozen)], after[:len(frozen)]):
        for name in layer_before:  # weights and BN running statistics alike
            np.testing.assert_array_equal(layer_after[name], layer_before[name], err_msg=name)
    for layer_before, layer_after in zip(before[len(frozen):], after[len(frozen):]):
        assert all(np.any(layer_after[name] != layer_before[name]) for name in layer_before)
    # the optimizer holds exactly the parameters of the layers that train
    optimized = {id(p) for p in trainer.optimizer._parameter_list}
    assert optimized == {id(p) for layer in trained for p in layer.parameters() if not p.stop_gradient}
    assert all(p.stop_gradient for layer in frozen for p in layer.parameters())


def one_step_change(tmp_path, weights, extra):
    """The change of every parameter in one optimizer step of a fine-tuning trainer with TRAIN `extra`."""
    trainer = engine.build_trainer(finetune_config(tmp_path, weights, extra), LOGGER, steps_per_epoch=1)
    before = snapshot(trainer.raw_model)
    engine.train_one_epoch(trainer, fixed_batches(1), epoch=0)
    return {name: value - before[name] for name, value in snapshot(trainer.raw_model).items()
            if not trainer.raw_model.state_dict()[name].stop_gradient}


def test_backbone_lr_scale_scales_the_backbone_update_only(tmp_path, imagenet_weights):
    full = one_step_change(tmp_path, imagenet_weights, '  BACKBONE_LR_SCALE: 1.0\n')
    scaled = one_step_change(tmp_path, imagenet_weights, '  BACKBONE_LR_SCALE: 0.1\n')
    assert full.keys() == scaled.keys()
    for name in full:
        factor = 1.0 if name.startswith('head.') else 0.1
        largest = np.abs(full[name]).max()
        assert largest > 0, name
        np.testing.assert_allclose(scaled[name], factor * full[name], atol=1e-4 * largest, err_msg=name)


# ---------------------------------------------------------------------------- other resolutions, backbone

STRIDES = (4, 8, 16, 32)


def b224_config(*flags):
    return update_config(get_config(), build_arg_parser('test').parse_args(
        ['-cfg', os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml')] + list(flags)))


@pytest.mark.slow
def test_b224_weights_at_448_features_and_exact_deploy_form():
    """The issue's example: B224's partitions are 56, 28, 14, 7, so at 448 every map holds 2x2 of them and the
    same weights apply; features keep strides 4..32 (also for a non-square input), before and after injection."""
    config = b224_config('-image_size', '448')
    assert config.DATA.IMAGE_SIZE == 448
    paddle.seed(0)
    images = paddle.randn([1, 3, 448, 448])
    model = randomize_batchnorms(build_repmlp(config), images)
    channels = config.MODEL.CHANNELS
    with paddle.no_grad():
        features = model.forward_features(images)
        assert [list(f.shape) for f in features] == [[1, c, 448 // s, 448 // s] for c, s in zip(channels, STRIDES)]
        wide = model.forward_features(paddle.randn([1, 3, 224, 448]), out_indices=(0, 3))
        assert [list(f.shape) for f in wide] == [[1, 96, 56, 112], [1, 768, 7, 14]]
        logits = model(images).numpy()
        model.locality_injection()
        for after, before in zip(model.forward_features(images), features):
            assert relative_error(after.numpy(), before.numpy()) <= 1e-5
        assert relative_error(model(images).numpy(), logits) <= 1e-5
        # a model built in the deploy form runs the injected weights at 448 to the same logits
        config.defrost()
        config.MODEL.DEPLOY = True
        deploy = build_repmlp(config)
        checkpoint.check_state_dict(deploy, model.state_dict(), 'injected')
        deploy.set_state_dict(model.state_dict())
        deploy.eval()
        assert relative_error(deploy(images).numpy(), logits) <= 1e-5


def test_an_image_size_that_cannot_work_is_a_clear_error():
    with pytest.raises(ConfigError, match=r'DATA.IMAGE_SIZE=300 .* 56x56 partitions; use a multiple of 224'):
        b224_config('-image_size', '300')
    with pytest.raises(ConfigError, match='use a multiple of 224'):
        b224_config('-image_size', '336')  # 84 at stage 0: whole, but not a multiple of 56
    model = build_repmlp(get_config(os.path.join(ROOT, 'configs', 'demo.yaml')))
    with pytest.raises(ValueError, match='gives stage 0 a 12x12 map, which does not split into 8x8 partitions'):
        model.forward_features(paddle.randn([1, 3, 48, 48]))


# ---------------------------------------------------------------------------- your own folder of images

def test_class_folders_give_list_files_and_class_names(tmp_path):
    root = tmp_path / 'mine'
    for split, count in (('train', 2), ('val', 1)):
        for name in ('zebra', 'cat', 'dog'):
            (root / split / name).mkdir(parents=True)
            for index in range(count):
                (root / split / name / f'{index}.jpg').write_bytes(b'')
    assert datasets.read_class_names(str(root)) is None
    assert make_list_files.main([str(root)]) == 0
    assert datasets.read_class_names(str(root)) == ['cat', 'dog', 'zebra']
    assert (root / 'val_list.txt').read_text().splitlines() == ['val/cat/0.jpg 0', 'val/dog/0.jpg 1', 'val/zebra/0.jpg 2']
    (root / 'classes.txt').write_text('cat\n\nzebra\n')
    with pytest.raises(datasets.DatasetError, match='no blank lines'):
        datasets.read_class_names(str(root))
    demo = tmp_path / 'demo'
    datasets.write_demo_dataset(str(demo))
    assert datasets.read_class_names(str(demo)) == list(datasets.DEMO_CLASSES)


def test_finetune_command_on_a_class_folder_dataset(tmp_path):
    """The README's workflow in small: class folders -> list files -> main_single_gpu.py -pretrained -finetune."""
    data = tmp_path / 'shapes'
    make_shapes_dataset.write_shapes_dataset(str(data), train_per_class=4, val_per_class=2)
    assert make_list_files.main([str(data)]) == 0
    assert datasets.read_class_names(str(data)) == sorted(make_shapes_dataset.CLASSES)
    tiny = os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml')
    source = get_config(tiny)
    source.defrost()
    source.MODEL.NUM_CLASSES = 1000
    weights = str(tmp_path / 'imagenet.pdparams')
    paddle.save(build_repmlp(source).state_dict(), weights)
    command = [sys.executable, os.path.join(ROOT, 'main_single_gpu.py'), '-cfg', tiny, '-dataset', 'imagenet2012',
               '-data_path', str(data), '-batch_size', '4', '-pretrained', weights, '-finetune',
               '-output', str(tmp_path / 'out'), '-opts', 'MODEL.NUM_CLASSES', '5', 'TRAIN.NUM_EPOCHS', '1',
               'TRAIN.FREEZE_STAGES', '1']
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert 'head.weight (new classifier: file [64, 1000], model [64, 5]; kept as initialised)' in result.stdout
    assert 'the stem and 1 stage(s) frozen' in result.stdout
    assert 'finished 1 epochs: val top-1' in result.stdout


def test_a_class_count_other_than_num_classes_is_logged(tmp_path, caplog):
    (tmp_path / 'classes.txt').write_text('arrow\nstar\n')
    config = get_config()
    config.defrost()
    config.DATA.DATA_PATH = str(tmp_path)
    logger = logging.getLogger('test_transfer.classes')
    with caplog.at_level(logging.WARNING, logger='test_transfer.classes'):
        engine.warn_on_class_count(config, logger)
        assert 'names 2 classes but MODEL.NUM_CLASSES is 1000; ' in caplog.text and 'MODEL.NUM_CLASSES 2' in caplog.text
        caplog.clear()
        config.MODEL.NUM_CLASSES = 2
        engine.warn_on_class_count(config, logger)
        (tmp_path / 'classes.txt').unlink()
        engine.warn_on_class_count(config, logger)  # no classes.txt: nothing to compare
    assert not caplog.text
