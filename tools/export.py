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
The work is `inference.export`; this file is its command line.
"""

import sys

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
import runtime  # noqa: F401  (before paddle: CPU threads and MKL path)

from config import UserError, build_arg_parser, get_config, update_config
from inference import export
from utils import run_cli


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = build_arg_parser('Export RepMLPNet weights as a static Paddle Inference model (and ONNX).')
    parser.add_argument('-onnx', action='store_true', help='also write model.onnx (needs paddle2onnx, onnxruntime)')
    args = parser.parse_args(argv)
    if not args.pretrained or not args.output:
        raise UserError('give the weights with -pretrained FILE.pdparams and the export folder with -output DIR')
    config = update_config(get_config(), args)
    export(config, config.MODEL.PRETRAINED, config.SAVE, onnx=args.onnx)
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
