"""tools/predict.py: eval preprocessing, sorted probabilities, class names, images after -images, one-line errors."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import paddle
import pytest
from PIL import Image

import predict
import transforms
from config import UserError
from datasets import load_rgb
from helpers import tiny_config, trained_like_model
from inference import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NUM_CLASSES = 10


def run_predict(*args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'predict.py'), *args],
                            capture_output=True, text=True, cwd=ROOT)
    return result.returncode, result.stdout, result.stderr


def known_head_weights(tmp_path, config):
    """Weights whose head ignores the image: logits = bias, so the probabilities are softmax(bias) for any image."""
    model = trained_like_model(config)
    bias = np.array([0.5, 2.0, -1.0, 3.0, 0.0, 1.0, -2.0, 2.5, 0.2, 1.5], dtype=np.float32)
    model.head.weight.set_value(paddle.zeros(model.head.weight.shape))
    model.head.bias.set_value(paddle.to_tensor(bias))
    path = str(tmp_path / 'known.pdparams')
    paddle.save(model.state_dict(), path)
    expected = np.exp(bias.astype(np.float64)) / np.exp(bias.astype(np.float64)).sum()
    return path, expected


def write_images(tmp_path):
    """A JPEG and a grey PNG of other sizes than the model's input (the eval transform resizes and crops)."""
    rng = np.random.default_rng(0)
    jpeg, png = str(tmp_path / 'a.jpg'), str(tmp_path / 'b.png')
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(jpeg)
    Image.fromarray(rng.integers(0, 256, (40, 33), dtype=np.uint8)).save(png)
    return [jpeg, png]


def test_predict_from_weights_and_from_an_export(tmp_path):
    config = tiny_config(tmp_path)
    weights, expected = known_head_weights(tmp_path, config)
    data = tmp_path / 'data'
    data.mkdir()
    names = [f'name_{label}' for label in range(NUM_CLASSES)]
    (data / 'classes.txt').write_text('\n'.join(names) + '\n')
    images = write_images(tmp_path)
    order = list(np.argsort(-expected))

    code, out, err = run_predict('-cfg', str(tmp_path / 'tiny.yaml'), '-pretrained', weights,
                                 '-data_path', str(data), '-topk', str(NUM_CLASSES), '-json', '-images', *images)
    assert code == 0, err
    results = json.loads(out)
    assert [result['image'] for result in results] == images
    for result in results:
        probabilities = [entry['probability'] for entry in result['top']]
        assert probabilities == sorted(probabilities, reverse=True)
        assert abs(sum(probabilities) - 1) < 1e-6
        assert [entry['label'] for entry in result['top']] == order
        assert [entry['name'] for entry in result['top']] == [names[label] for label in order]
        assert np.allclose(probabilities, expected[order], atol=1e-6)

    # an export folder: Paddle Inference, its config.yaml and classes.txt; text output, default -topk 5
    config.defrost()
    config.DATA.DATA_PATH = str(data)
    config.freeze()
    export(config, weights, str(tmp_path / 'export'), log=lambda *_: None)
    code, out, err = run_predict('-model_dir', str(tmp_path / 'export'), '-images', images[0])
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0] == images[0] and len(lines) == 6
    for line, label in zip(lines[1:], order):
        probability, shown_label, name = line.split()
        assert int(shown_label) == label and name == names[label]
        assert abs(float(probability) - expected[label]) < 1e-4


def by_hand(config, model, paths):
    """Softmax of `model` on the eval-transformed images, normalised here with the config's mean and std."""
    mean, std = (np.array(values, dtype=np.float32).reshape(3, 1, 1) for values in
                 (config.DATA.IMAGENET_MEAN, config.DATA.IMAGENET_STD))
    transform = transforms.build_transform(config, is_train=False)
    images = np.stack([(transform(load_rgb(path)) / np.float32(255) - mean) / std for path in paths])
    with paddle.no_grad():
        logits = model(paddle.to_tensor(images.astype(np.float32))).numpy().astype(np.float64)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_both_runners_normalise_the_images(tmp_path, capsys):
    """From weights and from an export folder, the probabilities are the model's on images normalised by hand."""
    config = tiny_config(tmp_path)
    model = trained_like_model(config, seed=1)
    weights = str(tmp_path / 'random.pdparams')
    paddle.save(model.state_dict(), weights)
    images = write_images(tmp_path)
    expected = by_hand(config, model, images)
    export(config, weights, str(tmp_path / 'export'), log=lambda *_: None)
    from_weights = ['-cfg', str(tmp_path / 'tiny.yaml'), '-pretrained', weights]
    for flags in (from_weights, ['-model_dir', str(tmp_path / 'export')]):
        assert predict.main(flags + ['-topk', str(NUM_CLASSES), '-json', '-images', *images]) == 0
        for result, row in zip(json.loads(capsys.readouterr().out), expected):
            probabilities = {entry['label']: entry['probability'] for entry in result['top']}
            assert np.allclose([probabilities[label] for label in range(NUM_CLASSES)], row, atol=1e-5), flags


def test_predict_errors_are_one_line(tmp_path):
    config = tiny_config(tmp_path)
    weights, _ = known_head_weights(tmp_path, config)
    image = write_images(tmp_path)[0]
    not_an_image = tmp_path / 'notes.jpg'
    not_an_image.write_text('not pixels')
    cfg = str(tmp_path / 'tiny.yaml')
    cases = [
        (['-cfg', cfg, '-pretrained', weights, '-images', str(tmp_path / 'missing.jpg')], 'image not found'),
        (['-cfg', cfg, '-pretrained', weights, '-images', str(not_an_image)], 'is not an image'),
        (['-cfg', cfg, '-pretrained', weights, '-opts', 'MODEL.NUM_CLASSES', '5', '-images', image],
         'only the classifier differs'),
        (['-cfg', cfg, '-pretrained', weights], 'give the image files to classify with -images'),
        (['-cfg', cfg, image, '-pretrained', weights, '-images', image], f'-cfg {image}: not a .yaml config'),
        (['-cfg', cfg, '-pretrained', weights, '-images', image, '-topk', '3', image], 'belongs to no flag'),
    ]
    for args, message in cases:
        with pytest.raises(UserError, match=re.escape(message)) as err:
            predict.main(args)
        assert '\n' not in str(err.value), args
    # as a user runs it (an image without -images): one line, exit code 2
    code, out, err = run_predict('-cfg', cfg, '-pretrained', weights, image)
    assert code == 2 and 'belongs to no flag: give the images after -images' in err
    assert len(err.strip().splitlines()) == 1, err


def test_imagenet_class_names_are_the_standard_order():
    names = predict.imagenet_class_names()
    assert len(names) == 1000
    assert names[0] == 'tench' and names[1] == 'goldfish' and names[-1] == 'toilet tissue'
