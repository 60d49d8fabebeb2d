"""What the programs in tools/ share around a trained model: load it from a config and weights, put it in its
deploy or inference form, check a new form's logits against the model as loaded, save a static Paddle Inference
model (and ONNX) and run it, and count the model's multiply-accumulates (MACs).

`export(...)` is the whole of tools/export.py but its flags.
"""

import functools
import importlib.util
import os
import shutil
import tempfile

import numpy as np
import runtime  # before paddle: CPU threads and MKL path
import paddle
from paddle import nn

from checkpoint import is_deploy_form, read_state_dict, set_state_strictly
from config import UserError
from datasets import CLASS_NAMES_FILE, DatasetError, resolve_data_path
from repmlp import RepMLPNetUnit, build_repmlp

TOLERANCE = 1e-4  # largest relative difference of the logits accepted between two forms of one network
MODEL_PREFIX = 'model'  # file names in an export folder: model.json / model.pdmodel, model.pdiparams, model.onnx
EXPORT_CHECK_BATCH = 3  # random images an export is checked on in one batch (then the first alone)
ONNX_OPSET = 13


def relative_difference(output, reference):
    """Largest absolute difference, relative to the largest magnitude of the reference."""
    output, reference = np.asarray(output, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(np.abs(output - reference).max() / max(np.abs(reference).max(), 1e-30))


def check_close(output, reference, what):
    """The largest relative difference of `output` from `reference`; UserError naming `what` above TOLERANCE."""
    difference = relative_difference(output, reference)
    if not difference <= TOLERANCE:
        raise UserError(f'{what} differs from the training-time model by {difference:.2e} relative (more than '
                        f'{TOLERANCE:g}); nothing was written')
    return difference


def random_images(config, batch, seed=0):
    """Normalised-looking float32 inputs [batch, 3, IMAGE_SIZE, IMAGE_SIZE], the same for every form compared."""
    size = config.DATA.IMAGE_SIZE
    return np.random.default_rng(seed).standard_normal((batch, 3, size, size)).astype(np.float32)


def run_model(model, images):
    """Logits of the dygraph `model` on the float32 numpy `images`, as numpy."""
    with paddle.no_grad():
        return model(paddle.to_tensor(images)).numpy()


def with_deploy(config, deploy):
    """A frozen copy of `config` with MODEL.DEPLOY set."""
    config = config.clone()
    config.defrost()
    config.MODEL.DEPLOY = deploy
    config.freeze()
    return config


def load_model(config, path):
    """The model of `config` in the form of the weights file at `path` (detected from its keys), loaded
    strictly, in eval mode; returns (model, deploy)."""
    state = read_state_dict(path)
    deploy = bool(is_deploy_form(state))
    model = build_repmlp(with_deploy(config, deploy))
    set_state_strictly(model, state, path)
    model.eval()
    return model, deploy


def deploy_model(config, model):
    """The deploy-form model of `config` (MODEL.DEPLOY True, in eval mode) holding the locality-injected weights
    of the training-time `model`, which is injected in place."""
    model.locality_injection()
    state = model.state_dict()
    deployed = build_repmlp(with_deploy(config, True))
    set_state_strictly(deployed, state, 'the injected model')
    deployed.eval()
    return deployed


def dataset_folder(config):
    """The dataset folder of `config` (where a classes.txt may be), or None where the config names none: a
    model is exported and run without its dataset."""
    try:
        return resolve_data_path(config)
    except DatasetError:
        return None


def save_inference_model(model, image_size, folder):
    """paddle.jit.save the (folded) `model` into `folder` as MODEL_PREFIX, for any batch of image_size inputs."""
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', 'image')]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), os.path.join(folder, MODEL_PREFIX))


def exported_files(model_dir):
    """(model file, params file) of the static model that `export` saved in `model_dir`; UserError if none."""
    params = os.path.join(model_dir, MODEL_PREFIX + '.pdiparams')
    for extension in ('.json', '.pdmodel'):  # PIR programs are .json, the older format .pdmodel
        program = os.path.join(model_dir, MODEL_PREFIX + extension)
        if os.path.isfile(program) and os.path.isfile(params):
            return program, params
    raise UserError(f'{model_dir} holds no exported model ({MODEL_PREFIX}.json or {MODEL_PREFIX}.pdmodel with '
                    f'{MODEL_PREFIX}.pdiparams); write one with tools/export.py')


def inference_threads():
    """The CPU threads an inference engine may use: OMP_NUM_THREADS, which runtime.py sets to the usable cores."""
    return int(os.environ.get('OMP_NUM_THREADS') or runtime.usable_cores())


def create_predictor(model_dir):
    """A Paddle Inference predictor of the model exported to `model_dir` (GPU if there is one)."""
    from paddle import inference
    program, params = exported_files(model_dir)
    config = inference.Config(program, params)
    if paddle.device.cuda.device_count() > 0:
        config.enable_use_gpu(256, 0)
    else:
        config.disable_gpu()
        # Paddle Inference turns oneDNN on by default on CPUs; measured with B224 on a 2-core EPYC it runs an image
        # in 10 s instead of 0.19 s with Paddle's own kernels (the same time as the dygraph deploy form).
        config.disable_mkldnn()
        config.set_cpu_math_library_num_threads(inference_threads())
    config.disable_glog_info()
    return inference.create_predictor(config)


def predictor_run(predictor, images):
    """Logits of the predictor on the float32 numpy `images` [N, 3, H, W], as numpy."""
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(images.shape))
    handle.copy_from_cpu(images)
    predictor.run()
    # the run leaves the calling thread's CPU math library on one thread, which halves any dygraph work that
    # follows in this process (measured: a 2048^3 matmul at 100 instead of 200 GFLOP/s); give the threads back
    paddle.base.core.set_num_threads(inference_threads())
    return predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()


def require_onnx_packages():
    """UserError naming the package and where it is listed when -onnx cannot run (checked before anything is
    written)."""
    for package in ('paddle2onnx', 'onnxruntime'):
        if importlib.util.find_spec(package) is None:
            raise UserError(f'-onnx needs the package {package}: pip install -r requirements-dev.txt (or export '
                            'without -onnx)')


def write_onnx(model_dir):
    """Convert the static model in `model_dir` to `model_dir`/model.onnx with paddle2onnx; returns its path."""
    import paddle2onnx
    program, params = exported_files(model_dir)
    # as bytes: given a save_file, paddle2onnx runs Polygraphy, which pip-installs packages at run time
    onnx_bytes = paddle2onnx.export(program, params, save_file=None, opset_version=ONNX_OPSET)
    if not onnx_bytes:
        raise UserError(f'paddle2onnx {paddle2onnx.__version__} could not convert the model (see its log above); '
                        'the Paddle Inference model is fine, run again without -onnx')
    path = os.path.join(model_dir, MODEL_PREFIX + '.onnx')
    with open(path, 'wb') as file:
        file.write(onnx_bytes)
    return path


def onnx_session(path):
    """An ONNX Runtime CPU session of the file at `path`."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: it warns about every initializer that paddle2onnx left unused
    options.intra_op_num_threads = inference_threads()
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def onnx_run(session, images):
    """Logits of the ONNX Runtime `session` on the float32 numpy `images` [N, 3, H, W]."""
    return session.run(None, {session.get_inputs()[0].name: images})[0]


def write_export_config(config, folder):
    """The resolved config as `folder`/config.yaml (tools/predict.py -model_dir reads it), and a copy of the
    dataset folder's classes.txt where it has one."""
    with open(os.path.join(folder, 'config.yaml'), 'w', encoding='utf-8') as file:
        file.write(config.dump())
    data = dataset_folder(config)
    if data and os.path.isfile(os.path.join(data, CLASS_NAMES_FILE)):
        shutil.copyfile(os.path.join(data, CLASS_NAMES_FILE), os.path.join(folder, CLASS_NAMES_FILE))


def export(config, weights, output_dir, onnx=False, log=print):
    """Export `weights` for `config` into `output_dir` (see tools/export.py); returns {form: difference}.

    Each form is compared with the model as loaded on the same random images; a difference above TOLERANCE is a
    UserError before anything is put in `output_dir`.
    """
    if onnx:
        require_onnx_packages()
    model, deploy = load_model(config, weights)
    log(f'{weights}: {"deploy" if deploy else "training-time"} form of {config.MODEL.NAME}')
    images = random_images(config, EXPORT_CHECK_BATCH)
    batches = [images, images[:1]]  # a batch size fixed in the program would show
    expected = [run_model(model, batch) for batch in batches]
    differences = {}

    def check(form, run):
        outputs = [run(batch) for batch in batches]
        differences[form] = max(check_close(out, ref, form) for out, ref in zip(outputs, expected))
        log(f'{form:<28} largest relative difference {differences[form]:.1e}')

    model.fold_batchnorms()
    check('folded dygraph model', functools.partial(run_model, model))
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.export-', dir=output_dir)
    try:
        save_inference_model(model, config.DATA.IMAGE_SIZE, staging)
        check('Paddle Inference predictor', functools.partial(predictor_run, create_predictor(staging)))
        if onnx:
            check('ONNX Runtime', functools.partial(onnx_run, onnx_session(write_onnx(staging))))
        write_export_config(config, staging)
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
            log(f'wrote {os.path.join(output_dir, name)}')
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return differences


def _conv_macs(layer, inputs, output):
    weight = layer.weight.shape  # [out, in / groups, kh, kw]
    return int(np.prod(output.shape)) * weight[1] * weight[2] * weight[3]


def _linear_macs(layer, inputs, output):
    return int(np.prod(output.shape)) * layer.weight.shape[0]


def _repmlp_unit_macs(unit, inputs, output):
    # the unit's RepMLPBlock (which the unit calls through its gate_terms, so no hook of the block's own fires):
    # fc3: each output element sums h*w products; each local k x k depthwise branch, k*k products (counted as the
    # convs they are, whatever form the implementation computes them in)
    block = unit.repmlp_block
    return int(np.prod(inputs[0].shape)) * (block.h * block.w + sum(k * k for k in block.reparam_conv_k))


MAC_COUNTERS = {nn.Conv2D: _conv_macs, nn.Linear: _linear_macs, RepMLPNetUnit: _repmlp_unit_macs}


def count_macs(model, image_size):
    """MACs of one forward pass of `model` on a single [1, 3, image_size, image_size] image, counted by forward
    hooks: convolutions, linear layers, the channel perceptron fc3 and the local perceptron's depthwise convs.
    Normalisations, activations, pooling and additions are not counted, as is usual. Leaves `model` in eval mode.
    """
    total = [0]
    hooks = []
    for layer in model.sublayers():
        counter = MAC_COUNTERS.get(type(layer))
        if counter is not None:
            hooks.append(layer.register_forward_post_hook(
                lambda layer, inputs, output, counter=counter: total.__setitem__(
                    0, total[0] + counter(layer, inputs, output))))
    model.eval()
    with paddle.no_grad():
        model(paddle.zeros([1, 3, image_size, image_size]))
    for hook in hooks:
        hook.remove()
    return total[0]
