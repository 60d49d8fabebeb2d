"""PNG line charts drawn with PIL alone (no plotting library): a run's training curves, tools/lr_schedule.py's LRs."""

import json

from PIL import Image, ImageDraw

from checkpoint import write_atomically


def plot_training_curves(log_path, png_path):
    """Draw the per-epoch losses and top-1 accuracies of a run's log.jsonl as a PNG (PIL only, no plotting library).

    Left panel: train_loss and val_loss; right panel: val_acc1 (and ema_acc1 when logged). Epochs without
    validation leave gaps between points. Written atomically.
    """
    with open(log_path, encoding='utf-8') as file:
        epochs = [json.loads(line) for line in file if line.strip()]
    panels = [('loss', [('train_loss', (31, 119, 180)), ('val_loss', (255, 127, 14))]),
              ('top-1 accuracy', [('val_acc1', (44, 160, 44)), ('ema_acc1', (214, 39, 40))])]
    save_line_charts(epochs, 'epoch', panels, png_path)


def save_line_charts(rows, x_key, panels, png_path):
    """Draw `panels` [(title, [(key, colour)])] side by side against `x_key` of `rows` (dicts) as a PNG, atomically.

    A row without a key leaves a gap in that line; points are marked while there are few enough to see.
    """
    width, height, margin = 480, 320, 48
    image = Image.new('RGB', (width * len(panels), height), 'white')
    draw = ImageDraw.Draw(image)
    for index, (title, series) in enumerate(panels):
        _draw_panel(draw, rows, x_key, title, series, (index * width + margin, margin, (index + 1) * width - 16,
                                                       height - margin))
    write_atomically(png_path, lambda temporary: image.save(temporary, format='PNG'))


def _draw_panel(draw, rows, x_key, title, series, box):
    """One chart of `series` [(key, colour)] against `x_key` inside `box` (left, top, right, bottom)."""
    left, top, right, bottom = box
    points = {key: [(row[x_key], row[key]) for row in rows if key in row] for key, _ in series}
    values = [v for pts in points.values() for _, v in pts]
    if not values:
        return
    low, high = min(values), max(values)
    high = high if high > low else low + 1.0
    first, last = rows[0][x_key], max(rows[-1][x_key], rows[0][x_key] + 1)

    def to_xy(x, value):
        return (left + (x - first) / (last - first) * (right - left),
                bottom - (value - low) / (high - low) * (bottom - top))

    draw.rectangle(box, outline=(160, 160, 160))
    draw.text((left, bottom + 6), f'{x_key} {first:.4g}', fill='black')
    last_label = f'{x_key} {last:.4g}'
    draw.text((right - draw.textlength(last_label), bottom + 6), last_label, fill='black')
    draw.text((left - 44, top), f'{high:.3g}', fill='black')
    draw.text((left - 44, bottom - 10), f'{low:.3g}', fill='black')
    draw.text((left, top - 40), title, fill='black')  # title and legend above the frame, clear of the lines
    legend_x = left
    for key, colour in series:
        if not points[key]:
            continue
        xy = [to_xy(x, value) for x, value in points[key]]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        if len(xy) <= (right - left) // 4:
            for x, y in xy:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        draw.text((legend_x, top - 24), key, fill=colour)
        legend_x += draw.textlength(key) + 12
