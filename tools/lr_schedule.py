"""The learning rate of every optimizer step of a configured run, as CSV and as a chart, before any GPU is spent.

    python tools/lr_schedule.py -cfg configs/repmlp_b_224.yaml configs/recipes/official.yaml \
        -steps_per_epoch 5004 -world_size 8 -csv official.csv -png official.png

The LRs are those the training run would use: BASE_LR, WARMUP_START_LR and END_LR scaled to the global batch
(DATA.BATCH_SIZE x -world_size x TRAIN.ACCUM_ITER against TRAIN.LR_REFERENCE_BATCH), shaped by
TRAIN.LR_SCHEDULE, starting after TRAIN.LAST_EPOCH. `-steps_per_epoch` counts optimizer steps of one epoch (what
the training log prints as "N optimizer steps per epoch"; on ImageNet, 1281167 // (batch x processes) // ACCUM_ITER).
The CSV has one row per optimizer step: `step` (from 0, over the whole run), `epoch` (from 1, as the log counts),
`lr`.
"""

import csv
import os
import sys

import repo_path  # noqa: F401  (the repository root on sys.path, for the imports below)
import runtime  # noqa: F401  (before paddle)

import charts
import engine
import utils
from checkpoint import write_atomically
from config import UserError, build_arg_parser, get_config, update_config


def schedule_rows(config, steps_per_epoch, world_size):
    """[{'step', 'epoch', 'lr'}] for every optimizer step from TRAIN.LAST_EPOCH to TRAIN.NUM_EPOCHS."""
    scheduler = engine.build_lr_scheduler(config, engine.learning_rates(config, world_size), steps_per_epoch)
    rows = []
    for step in range(config.TRAIN.LAST_EPOCH * steps_per_epoch, config.TRAIN.NUM_EPOCHS * steps_per_epoch):
        rows.append({'step': step, 'epoch': step // steps_per_epoch + 1, 'lr': scheduler.get_lr()})
        scheduler.step()
    return rows


def write_csv(rows, path):
    """`rows` as CSV with a header line, replacing `path` atomically."""
    def write(temporary):
        with open(temporary, 'w', encoding='utf-8', newline='') as file:
            writer = csv.DictWriter(file, fieldnames=['step', 'epoch', 'lr'], lineterminator='\n')
            writer.writeheader()
            writer.writerows({**row, 'lr': repr(row['lr'])} for row in rows)
    write_atomically(path, write)


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = build_arg_parser('Write the LR of every optimizer step of a configured run as CSV and PNG.')
    parser.add_argument('-steps_per_epoch', type=int, required=True, help='optimizer steps in one epoch')
    parser.add_argument('-world_size', type=int, default=1, help='training processes (GPUs), for the LR scaling')
    parser.add_argument('-csv', default=None, help='CSV file to write (step,epoch,lr)')
    parser.add_argument('-png', default=None, help='chart to write')
    args = parser.parse_args(argv)
    for flag in ('steps_per_epoch', 'world_size'):
        if getattr(args, flag) < 1:
            raise UserError(f'-{flag} must be positive, got {getattr(args, flag)}')
    if not args.csv and not args.png:
        raise UserError('give -csv FILE, -png FILE or both: there is nothing to write otherwise')
    for path in (args.csv, args.png):
        if path and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise UserError(f'the folder of {path} does not exist')
    config = update_config(get_config(), args)
    rows = schedule_rows(config, args.steps_per_epoch, args.world_size)
    if args.csv:
        write_csv(rows, args.csv)
    if args.png:
        points = [{'epoch': row['step'] / args.steps_per_epoch, 'lr': row['lr']} for row in rows]
        batch = engine.learning_rates(config, args.world_size)['effective_batch']
        title = f'TRAIN.LR_SCHEDULE {config.TRAIN.LR_SCHEDULE}, global batch {batch}'
        charts.save_line_charts(points, 'epoch', [(title, [('lr', (31, 119, 180))])], args.png)
    peak = max(rows, key=lambda row: row['lr'])
    print(f'{len(rows)} optimizer steps ({config.TRAIN.LR_SCHEDULE} schedule): lr {rows[0]["lr"]:.4g} at step '
          f'{rows[0]["step"]}, peak {peak["lr"]:.4g} at step {peak["step"]}, {rows[-1]["lr"]:.4g} at the last step '
          f'{rows[-1]["step"]}; wrote ' + ' and '.join(path for path in (args.csv, args.png) if path))
    return 0


if __name__ == '__main__':
    sys.exit(utils.run_cli(main))
