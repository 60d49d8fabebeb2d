"""inference.py: the comparison of two forms, the inference and deploy forms, MAC counting, export's checks."""

import os

import numpy as np
import paddle
import pytest
from paddle import nn

import inference
from checkpoint import is_deploy_form
from config import UserError
from datasets import DEFAULT_DEMO_PATH
from helpers import relative_error, tiny_config, trained_like_model

REFERENCE = np.array([[1.0, -2.0, 4.0], [0.5, 0.0, -3.0]], dtype=np.float32)


def test_check_close_accepts_differences_up_to_the_tolerance_of_the_largest_logit():
    nudged = REFERENCE.copy()
    nudged[1, 2] += 4 * 5e-5  # 2e-4 against the largest magnitude 4: 5e-5 relative
    assert inference.check_close(nudged, REFERENCE, 'x') == pytest.approx(5e-5, rel=1e-3)


@pytest.mark.parametrize('output', [REFERENCE + np.float32(4 * 2e-4), -REFERENCE, REFERENCE[:, ::-1]],
                         ids=['2x the tolerance', 'sign flipped', 'classes reordered'])
def test_check_close_refuses_other_logits_naming_the_form(output):
    with pytest.raises(UserError, match='the folded form differs from the training-time model by .* nothing was '
                                        'written'):
        inference.check_close(output, REFERENCE, 'the folded form')


def test_deploy_model_is_the_deploy_form_with_the_same_outputs(tmp_path):
    config = tiny_config(tmp_path)
    model = trained_like_model(config)
    images = inference.random_images(config, 2, seed=3)
    expected = inference.run_model(model, images)
    deployed = inference.deploy_model(config, model)
    assert is_deploy_form(deployed.state_dict()) is True and not deployed.training
    assert relative_error(inference.run_model(deployed, images), expected) <= 1e-5


def test_load_model_detects_the_form_of_the_weights(tmp_path):
    config = tiny_config(tmp_path)
    model = trained_like_model(config)
    train_file, deploy_file = str(tmp_path / 'train.pdparams'), str(tmp_path / 'deploy.pdparams')
    paddle.save(model.state_dict(), train_file)
    paddle.save(inference.deploy_model(config, model).state_dict(), deploy_file)
    for path, deploy in ((train_file, False), (deploy_file, True)):
        loaded, detected = inference.load_model(config, path)
        assert detected is deploy and not loaded.training


def test_count_macs_by_hand():
    # conv: 4 x 8 x 8 outputs of 3 x 3 x 3 products; depthwise conv: 4 x 8 x 8 of 3 x 3; linear: 5 of 256
    model = nn.Sequential(nn.Conv2D(3, 4, 3, padding=1), nn.Conv2D(4, 4, 3, padding=1, groups=4), nn.ReLU(),
                          nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    assert inference.count_macs(model, 8) == 256 * 27 + 256 * 9 + 5 * 256


def test_dataset_folder(tmp_path):
    config = tiny_config(tmp_path)
    assert inference.dataset_folder(config) is None  # imagenet2012 without a DATA_PATH: an export needs none
    config.defrost()
    config.DATA.DATASET = 'demo'
    assert inference.dataset_folder(config) == DEFAULT_DEMO_PATH
    config.DATA.DATA_PATH = str(tmp_path)
    assert inference.dataset_folder(config) == str(tmp_path)


def test_exported_files_names_the_folder_without_a_model(tmp_path):
    with pytest.raises(UserError, match=f'{tmp_path} holds no exported model .* write one with tools/export.py'):
        inference.exported_files(str(tmp_path))


def test_onnx_without_its_package_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """paddle2onnx is only in requirements-dev.txt: without it, -onnx stops before the export folder exists."""
    real_find_spec = inference.importlib.util.find_spec
    monkeypatch.setattr(inference.importlib.util, 'find_spec',
                        lambda name: None if name == 'paddle2onnx' else real_find_spec(name))
    config = tiny_config(tmp_path)
    output = tmp_path / 'export'
    with pytest.raises(UserError, match='-onnx needs the package paddle2onnx: pip install -r requirements-dev.txt'):
        inference.export(config, str(tmp_path / 'missing.pdparams'), str(output), onnx=True)
    assert not output.exists()


def test_export_refuses_a_program_with_a_fixed_batch_size(tmp_path, monkeypatch):
    """The export is checked on a batch and then on one image, so a program traced for one batch size fails."""
    config = tiny_config(tmp_path)
    weights = str(tmp_path / 'train.pdparams')
    paddle.save(trained_like_model(config).state_dict(), weights)

    def save_fixed_batch(model, image_size, folder):
        spec = [paddle.static.InputSpec([inference.EXPORT_CHECK_BATCH, 3, image_size, image_size], 'float32')]
        paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True),
                        os.path.join(folder, inference.MODEL_PREFIX))
    monkeypatch.setattr(inference, 'save_inference_model', save_fixed_batch)
    with pytest.raises(ValueError, match='shape'):  # Paddle Inference on one image: the program's reshape fails
        inference.export(config, weights, str(tmp_path / 'export'), log=lambda *_: None)
    assert os.listdir(tmp_path / 'export') == []
