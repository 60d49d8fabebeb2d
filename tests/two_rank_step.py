"""One optimizer step of the real training code (engine.build_trainer + engine.train_one_epoch) on a fixed batch.

    python tests/two_rank_step.py OUT ranks   two gloo ranks (gradients averaged by the step, as over gloo);
                                              rank r trains on half r of the batch and writes OUT/rank{r}.npz
    python tests/two_rank_step.py OUT single  one process, TRAIN.ACCUM_ITER 2 over half 0 then half 1: each half
                                              through BN in train mode, as on its rank, and the mean of the two
                                              gradients applied once; writes OUT/single.npz

Both use the same global batch, hence the same scaled LR. tests/test_engine.py compares the files.
"""

import logging
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import runtime  # noqa: E402,F401  (before paddle)
import paddle  # noqa: E402

import engine  # noqa: E402
import utils  # noqa: E402
from config import get_config  # noqa: E402

HALF_BATCH = 8
# Many BN biases here have a true gradient of 0 (a BN follows them on every path) and get float noise instead;
# with AdamW's default epsilon 1e-8 the first step turns any noise into +-LR, so a 1e-9 difference between two
# correct summation orders would move them by 2 x LR. An epsilon of 1e-3 keeps the step proportional to the
# gradient at that scale, so the comparison tests the gradients, not the noise.
OPTS = {'TRAIN.OPTIMIZER.EPS': 1e-3, 'TRAIN.WARMUP_EPOCHS': 0, 'TRAIN.NUM_EPOCHS': 1,
        'AUG.MIXUP': 0.0, 'AUG.CUTMIX': 0.0,
        'DATA.BATCH_SIZE': HALF_BATCH}


def make_config(accum_iter):
    """The tiny test model with the step's settings."""
    config = get_config(os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml'))
    config.defrost()
    for key, value in {**OPTS, 'TRAIN.ACCUM_ITER': accum_iter}.items():
        *sections, name = key.split('.')
        node = config
        for section in sections:
            node = node[section]
        node[name] = value
    config.freeze()
    return config


def halves():
    """Two fixed halves of one batch: (uint8 images [8, 3, 32, 32], int64 labels [8]) each."""
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, size=(2, HALF_BATCH, 3, 32, 32)).astype('uint8')
    labels = rng.randint(0, 6, size=(2, HALF_BATCH)).astype('int64')
    return [(images[i], labels[i]) for i in range(2)]


def one_step(config, batches, out_file):
    """Build the trainer as a run does, train one epoch over `batches` (one optimizer step), save the weights."""
    paddle.set_device('cpu')
    trainer = engine.build_trainer(config, logging.getLogger('two_rank_step'), steps_per_epoch=1)
    loader = [(paddle.to_tensor(images), paddle.to_tensor(labels)) for images, labels in batches]
    trained = {name: param for name, param in trainer.raw_model.named_parameters() if not param.stop_gradient}
    before = {name: param.numpy().copy() for name, param in trained.items()}
    engine.train_one_epoch(trainer, loader, epoch=0)
    after = {name: param.numpy() for name, param in trained.items()}
    moved = max(float(np.abs(after[name] - before[name]).max()) for name in after)
    np.savez(out_file, moved=moved, **after)


def rank_worker(out_dir):
    """One of the two data-parallel ranks."""
    paddle.distributed.init_parallel_env()
    rank = utils.get_rank()
    one_step(make_config(accum_iter=1), [halves()[rank]], os.path.join(out_dir, f'rank{rank}.npz'))


if __name__ == '__main__':
    out_dir, mode = sys.argv[1], sys.argv[2]
    if mode == 'ranks':
        os.environ['OMP_NUM_THREADS'] = '1'
        paddle.distributed.spawn(rank_worker, args=(out_dir,), nprocs=2, backend='gloo')
    else:
        one_step(make_config(accum_iter=2), halves(), os.path.join(out_dir, 'single.npz'))
