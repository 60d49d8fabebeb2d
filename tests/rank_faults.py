"""A 2-rank gloo job in which rank 1 differs from rank 0 on purpose; it must stop with one RanksDisagree line.

    python tests/rank_faults.py FAULT OUT DATA
      weights     rank 1's model starts from other weights (as a rank that did not load what rank 0 loaded)
      config      rank 1 runs with another TRAIN.NUM_EPOCHS (as another command typed on its node)
      checkpoint  a folder per rank; -resume auto finds checkpoint-0001 on rank 0 and checkpoint-0002 on rank 1
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import runtime  # noqa: E402,F401  (before paddle)
import paddle  # noqa: E402

import engine  # noqa: E402
import main_multi_gpu  # noqa: E402
from config import get_config  # noqa: E402


def build_trainer_with_other_weights_on_rank_1(config, logger, steps_per_epoch, build=engine.build_trainer):
    trainer = build(config, logger, steps_per_epoch)
    if paddle.distributed.get_rank() == 1:
        trainer.raw_model.head.bias.set_value(trainer.raw_model.head.bias + 0.01)
    return trainer


def rank_worker(fault, output, data_path):
    """Join the job as main_multi_gpu.worker does, with rank 1's difference made first."""
    rank = int(os.environ['PADDLE_TRAINER_ID'])
    config = get_config(os.path.join(ROOT, 'tests', 'configs', 'tiny_demo.yaml'))
    config.defrost()
    config.DATA.DATA_PATH, config.SAVE, config.TRAIN.NUM_EPOCHS = data_path, output, 1
    if fault == 'weights':
        engine.build_trainer = build_trainer_with_other_weights_on_rank_1
    elif fault == 'config' and rank == 1:
        config.TRAIN.NUM_EPOCHS = 2
    elif fault == 'checkpoint':
        config.SAVE, config.MODEL.RESUME = os.path.join(output, f'rank{rank}'), 'auto'
        os.makedirs(config.SAVE, exist_ok=True)
        open(os.path.join(config.SAVE, f'checkpoint-000{rank + 1}.pdparams'), 'wb').close()
    config.freeze()
    main_multi_gpu.worker(config)


if __name__ == '__main__':
    fault, output, data_path = sys.argv[1:]
    os.environ['OMP_NUM_THREADS'] = '1'
    context = paddle.distributed.spawn(rank_worker, args=(fault, output, data_path), nprocs=2, backend='gloo',
                                       join=False)
    try:
        while not context.join():
            pass
    except Exception:  # a rank failed; its line is on stderr
        sys.exit(max(process.exitcode or 0 for process in context.processes))
