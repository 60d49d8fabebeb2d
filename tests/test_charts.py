"""charts.py: the PNG line charts, checked by their pixels (PIL)."""

import json
import os

import numpy as np
from PIL import Image

import charts

TRAIN_LOSS, VAL_ACC1, EMA_ACC1 = (31, 119, 180), (44, 160, 44), (214, 39, 40)  # the colours of plot_training_curves


def pixels_of(image, colour):
    return int((np.asarray(image.convert('RGB')) == colour).all(axis=2).sum())


def test_training_curves_draw_what_the_log_holds(tmp_path):
    """Two panels of 480 x 320; lines in the colours of the logged keys only (no EMA logged: none of its red)."""
    log = tmp_path / 'log.jsonl'
    log.write_text(''.join(json.dumps(row) + '\n' for row in [
        {'epoch': 1, 'train_loss': 2.0},
        {'epoch': 2, 'train_loss': 1.5, 'val_loss': 1.6, 'val_acc1': 0.4},
        {'epoch': 3, 'train_loss': 1.0, 'val_loss': 1.2, 'val_acc1': 0.6}]))
    png = tmp_path / 'curves.png'
    charts.plot_training_curves(str(log), str(png))
    image = Image.open(png)
    assert image.format == 'PNG' and image.size == (960, 320)
    left, right = image.crop((0, 0, 480, 320)), image.crop((480, 0, 960, 320))
    assert pixels_of(left, TRAIN_LOSS) > 100 and pixels_of(left, VAL_ACC1) == 0
    assert pixels_of(right, VAL_ACC1) > 100 and pixels_of(right, TRAIN_LOSS) == 0
    assert pixels_of(image, EMA_ACC1) == 0
    assert sorted(os.listdir(tmp_path)) == ['curves.png', 'log.jsonl']  # written through a temporary, none left


def test_a_line_chart_spans_its_box_from_first_to_last_point(tmp_path):
    """A falling line from (0, 1) to (10, 0): its pixels start at the box's top left and end at its bottom right."""
    png = str(tmp_path / 'lr.png')
    rows = [{'epoch': x, 'lr': 1.0 - x / 10} for x in range(11)]
    charts.save_line_charts(rows, 'epoch', [('lr', [('lr', TRAIN_LOSS)])], png)
    ys, xs = np.nonzero((np.asarray(Image.open(png).convert('RGB')) == TRAIN_LOSS).all(axis=2))
    left, top, right, bottom = 48, 48, 480 - 16, 320 - 48  # the box of the only panel
    legend = ys >= top  # the legend's text, in the line's colour, stands above the box
    assert abs(xs[legend].min() - left) <= 2 and abs(xs[legend].max() - right) <= 2
    first, last = xs[legend].argmin(), xs[legend].argmax()
    assert abs(ys[legend][first] - top) <= 3 and abs(ys[legend][last] - bottom) <= 3
