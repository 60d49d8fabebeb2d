"""Export RepMLPNet weights as a static Paddle Inference model (and ONNX), every BN folded away, outputs checked.

    python tools/export.py -cfg configs/repmlp_b_224.yaml -pretrained repmlp_b_224.pdparams -output export/b224 [-onnx]

Takes training-time or deploy-form `.pdparams` (the form is detected from the keys). The model is put in its
inference form (`RepMLPNet.fold_batchnorms`: locality injection, every conv+BN pair a conv with bias, prebn2 and
head_norm folded into the layer after them, the BN before each block a per-channel affine), traced with
`paddle.jit.to_static` for inputs [None, 3, IMAGE_SIZE, IMAGE_SIZE] (any batch size) and saved with
`paddle.jit.save`. `-output` then holds `model.json` (or `model.pdmodel` without PIR) and `model.pdiparams`,
`config.yaml` (the resolved config, which tools/predict.py -model_dir reads), `classes.txt` when the dataset
folder has one, and with `-onnx` `model.onnx` (through paddle2onnx).

Each form is compared with the model as loaded, on the same random images (several, then one, so a fixed batch
size would show): the folded dygraph model, the Paddle Inference predictor, ONNX Runtime. A largest relative
difference of the logits above 1e-4 stops the program with exit code 2 before anything is put in `-output`.
"""

import importlib.util
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime  # noqa: E402,F401  (before paddle: CPU threads and MKL path)
import paddle  # noqa: E402

from config import UserError, build_arg_parser, get_config, update_config  # noqa: E402
from datasets import CLASS_NAMES_FILE, DEFAULT_DEMO_PATH  # noqa: E402

from reparam import check_close, load_model, random_images, run_model  # noqa: E402
from utils import run_cli  # noqa: E402

MODEL_PREFIX = 'model'  # file names in an export folder: model.json / model.pdmodel, model.pdiparams, model.onnx
CHECK_BATCH = 3  # random images compared in one batch (then the first alone)
ONNX_OPSET = 13


def exported_files(model_dir):
    """(model file, params file) of the static model that `export` saved in `model_dir`; UserError if none."""
    params = os.path.join(model_dir, MODEL_PREFIX + '.pdiparams')
    for extension in ('.json', '.pdmodel'):  # PIR programs are .json, the older format .pdmodel
        program = os.path.join(model_dir, MODEL_PREFIX + extension)
        if os.path.isfile(program) and os.path.isfile(params):
            return program, params
    raise UserError(f'{model_dir} holds no exported model ({MODEL_PREFIX}.json or {MODEL_PREFIX}.pdmodel with '
                    f'{MODEL_PREFIX}.pdiparams); write one with tools/export.py')


def data_folder(config):
    """The dataset folder of `config` (where a classes.txt may be): DATA.DATA_PATH, or the demo data's default."""
    if not config.DATA.DATA_PATH and config.DATA.DATASET == 'demo':
        return DEFAULT_DEMO_PATH
    return config.DATA.DATA_PATH


def save_inference_model(model, image_size, folder):
    """paddle.jit.save the (folded) `model` into `folder` as MODEL_PREFIX, for any batch of image_size inputs."""
    spec = [paddle.static.InputSpec([None, 3, image_size, image_size], 'float32', 'image')]
    paddle.jit.save(paddle.jit.to_static(model, input_spec=spec, full_graph=True), os.path.join(folder, MODEL_PREFIX))


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


def onnx_session(path):
    """An ONNX Runtime CPU session of the file at `path`."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: it warns about every initializer that paddle2onnx left unused
    options.intra_op_num_threads = inference_threads()
    return onnxruntime.InferenceSession(path, options, providers=['CPUExecutionProvider'])


def require_onnx_packages():
    """UserError naming the package and where it is listed when -onnx cannot run (checked before anything is
    written)."""
    for package in ('paddle2onnx', 'onnxruntime'):
        if importlib.util.find_spec(package) is None:
            raise UserError(f'-onnx needs the package {package}: pip install -r requirements-dev.txt (or export '
                            'without -onnx)')


def export(config, weights, output_dir, onnx=False, log=print):
    """Export `weights` for `config` into `output_dir` after checking every form; returns {form: difference}."""
    if onnx:
        require_onnx_packages()
    model, deploy = load_model(config, weights)
    log(f'{weights}: {"deploy" if deploy else "training-time"} form of {config.MODEL.NAME}')
    size = config.DATA.IMAGE_SIZE
    images = random_images(config, batch=CHECK_BATCH)
    batches = [images, images[:1]]
    expected = [run_model(model, batch) for batch in batches]
    differences = {}

    def check(form, outputs):
        differences[form] = max(check_close(out, ref, form) for out, ref in zip(outputs, expected))
        log(f'{form:<28} largest relative difference {differences[form]:.1e}')

    model.fold_batchnorms()
    check('folded dygraph model', [run_model(model, batch) for batch in batches])
    os.makedirs(output_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix='.export-', dir=output_dir)
    try:
        save_inference_model(model, size, staging)
        predictor = create_predictor(staging)
        check('Paddle Inference predictor', [predictor_run(predictor, batch) for batch in batches])
        if onnx:
            import paddle2onnx
            program, params = exported_files(staging)
            onnx_path = os.path.join(staging, MODEL_PREFIX + '.onnx')
            # as bytes: given a save_file, paddle2onnx runs Polygraphy, which pip-installs packages at run time
            onnx_bytes = paddle2onnx.export(program, params, save_file=None, opset_version=ONNX_OPSET)
            if not onnx_bytes:
                raise UserError(f'paddle2onnx {paddle2onnx.__version__} could not convert the model (see its log '
                                'above); the Paddle Inference model is fine, run again without -onnx')
            with open(onnx_path, 'wb') as file:
                file.write(onnx_bytes)
            session = onnx_session(onnx_path)
            name = session.get_inputs()[0].name
            check('ONNX Runtime', [session.run(None, {name: batch})[0] for batch in batches])
        with open(os.path.join(staging, 'config.yaml'), 'w', encoding='utf-8') as file:
            file.write(config.dump())
        classes = os.path.join(data_folder(config), CLASS_NAMES_FILE)
        if data_folder(config) and os.path.isfile(classes):
            shutil.copyfile(classes, os.path.join(staging, CLASS_NAMES_FILE))
        for name in sorted(os.listdir(staging)):
            os.replace(os.path.join(staging, name), os.path.join(output_dir, name))
            log(f'wrote {os.path.join(output_dir, name)}')
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return differences


def main():
    parser = build_arg_parser('Export RepMLPNet weights as a static Paddle Inference model (and ONNX).')
    parser.add_argument('-onnx', action='store_true', help='also write model.onnx (needs paddle2onnx, onnxruntime)')
    args = parser.parse_args()
    if not args.pretrained or not args.output:
        parser.error('give the weights with -pretrained FILE.pdparams and the export folder with -output DIR')
    config = update_config(get_config(), args)
    export(config, config.MODEL.PRETRAINED, config.SAVE, onnx=args.onnx)


if __name__ == '__main__':
    run_cli(main)
