"""Convert an official RepMLPNet PyTorch checkpoint (.pth) into Paddle weights (.pdparams), without PyTorch.

    python tools/convert_torch_weights.py -cfg configs/repmlp_b_224.yaml -src RepMLPNet-B224.pth -dst b224.pdparams

The `.pth` is read with the standard library and numpy: `torch.save` writes a zip archive holding a pickle
(`data.pkl`) whose tensors point at raw little-endian storages (`data/<key>`). The training-time and the
deploy (locality-injected) forms are both accepted and told apart by their keys; a state dict wrapped as
{'model': ...} or {'state_dict': ...}, with or without a 'module.' prefix, is unwrapped. Every key and shape
is checked against the model built from the config before anything is written.
"""

import collections
import os
import pickle
import sys
import zipfile

import numpy as np

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
from checkpoint import CheckpointError, check_state_dict, is_deploy_form, save_atomically
from config import build_arg_parser, get_config, update_config
from utils import run_cli

STORAGE_DTYPES = {
    'FloatStorage': np.float32, 'DoubleStorage': np.float64, 'HalfStorage': np.float16,
    'BFloat16Storage': 'bfloat16', 'LongStorage': np.int64, 'IntStorage': np.int32, 'ShortStorage': np.int16,
    'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
}
BN_RENAMES = {'running_mean': '_mean', 'running_var': '_variance'}


class _StorageType:
    """Stands for torch.FloatStorage & co. in the pickle: only its element type matters."""

    def __init__(self, name):
        self.dtype = STORAGE_DTYPES[name]


def _rebuild_tensor(storage, offset, size, stride, *_):
    """numpy twin of torch._utils._rebuild_tensor_v2: a strided view of the storage, copied."""
    if not size:
        return storage[offset].copy()
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.ascontiguousarray(view)


def _rebuild_parameter(tensor, *_):
    return tensor


class _TorchUnpickler(pickle.Unpickler):
    """Unpickles a torch.save archive's data.pkl into numpy arrays; refuses any other object type."""

    ALLOWED = {
        ('collections', 'OrderedDict'): collections.OrderedDict,  # keeps torch's _metadata attribute
        ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
        ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    }

    def __init__(self, file, archive, prefix, source):
        super().__init__(file)
        self.archive, self.prefix, self.source = archive, prefix, source

    def find_class(self, module, name):
        if module == 'torch' and name in STORAGE_DTYPES:
            return lambda *args: _StorageType(name)
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise CheckpointError(f'{self.source}: holds a {module}.{name} object; only state dicts of tensors '
                              'can be converted')

    def persistent_load(self, saved_id):
        # ('storage', storage type, key, location, number of elements)
        _, storage_type, key, _, numel = saved_id
        if not isinstance(storage_type, _StorageType):
            storage_type = storage_type()
        raw = self.archive.read(f'{self.prefix}data/{key}')
        if storage_type.dtype == 'bfloat16':
            # bfloat16 is the upper half of a float32
            bits = np.frombuffer(raw, dtype='<u2', count=numel).astype(np.uint32) << 16
            return bits.view(np.float32)
        return np.frombuffer(raw, dtype=np.dtype(storage_type.dtype).newbyteorder('<'), count=numel)


def read_torch_checkpoint(path):
    """The tensors of a `torch.save` file as {name: numpy array}, unwrapped from 'model'/'state_dict' and 'module.'."""
    if not os.path.isfile(path):
        raise CheckpointError(f'file not found: {path}')
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f'{path} is not a torch.save zip archive (files from PyTorch < 1.6 must be re-saved '
                              'with a newer PyTorch; .pdparams files need no conversion)')
    with zipfile.ZipFile(path) as archive:
        pickles = [name for name in archive.namelist() if name.endswith('data.pkl')]
        if not pickles:
            raise CheckpointError(f'{path} is a zip archive without data.pkl: not a torch.save file')
        prefix = pickles[0][:-len('data.pkl')]
        with archive.open(pickles[0]) as file:
            state = _TorchUnpickler(file, archive, prefix, path).load()
    for wrapper in ('model', 'state_dict'):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    tensors = {name: value for name, value in state.items() if isinstance(value, np.ndarray)}
    if not tensors:
        raise CheckpointError(f'{path} holds no tensors')
    if all(name.startswith('module.') for name in tensors):
        tensors = {name[len('module.'):]: value for name, value in tensors.items()}
    return tensors


def torch_to_paddle(state, linear_weights):
    """Rename BN statistics, drop `num_batches_tracked`, and transpose the Linear weights named in `linear_weights`."""
    converted = {}
    for name, value in state.items():
        prefix, _, leaf = name.rpartition('.')
        if leaf == 'num_batches_tracked':
            continue
        if leaf in BN_RENAMES:
            name = f'{prefix}.{BN_RENAMES[leaf]}'
        elif name in linear_weights:
            value = value.T  # torch Linear is [out, in], Paddle's is [in, out]
        converted[name] = np.ascontiguousarray(value, dtype=np.float32)
    return converted


def convert(config, src, dst):
    """Convert `src` (.pth) to `dst` (.pdparams) for the variant of `config`; returns the form found."""
    import paddle
    from repmlp import build_repmlp

    state = read_torch_checkpoint(src)
    deploy = bool(is_deploy_form(state))
    config.defrost()
    config.MODEL.DEPLOY = deploy
    config.freeze()
    model = build_repmlp(config)
    linear_weights = {f'{name}.weight' for name, layer in model.named_sublayers()
                      if isinstance(layer, paddle.nn.Linear)}
    converted = torch_to_paddle(state, linear_weights)
    check_state_dict(model, converted, src)
    save_atomically(converted, dst)
    return 'deploy' if deploy else 'training-time'


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = build_arg_parser('Convert an official RepMLPNet PyTorch checkpoint to a Paddle .pdparams file.')
    parser.add_argument('-src', required=True, help='the .pth file saved by the official PyTorch code')
    parser.add_argument('-dst', required=True, help='the .pdparams file to write')
    args = parser.parse_args(argv)
    config = update_config(get_config(), args)
    form = convert(config, args.src, args.dst)
    print(f'{args.src}: {form} form, {config.MODEL.NAME}; wrote {args.dst}'
          + (' (build the model with -opts MODEL.DEPLOY True to load it)' if form == 'deploy' else ''))
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
