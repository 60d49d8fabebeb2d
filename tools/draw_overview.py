"""Draw the README's overview of RepMLPNet: the hierarchy, one RepMLP block and its locality injection.

    python tools/draw_overview.py                                   # -> docs/repmlpnet_overview.png
    python tools/draw_overview.py -cfg configs/repmlp_t_256.yaml -output t256.png

Every number in the picture (channels, map and partition sizes, share-sets, units per stage, conv kernels,
classes) is read from the config, so the picture follows the architecture it is drawn from. Drawn with PIL
alone (no model is built): the picture is deterministic for a given config, font file and Pillow/FreeType
build, and the labels are also stored as a PNG text chunk so that tests can check them wherever fonts render
differently.
"""

import argparse
import os
import sys

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin, features

from repo_path import ROOT  # importing it puts the repository root on sys.path

from config import PATCH_SIZE, get_config
from utils import run_cli

DEFAULT_CFG = os.path.join(ROOT, 'configs', 'repmlp_b_224.yaml')
DEFAULT_OUTPUT = os.path.join(ROOT, 'docs', 'repmlpnet_overview.png')
WIDTH, HEIGHT = 1600, 872
FONT_FILES = ('DejaVuSans.ttf', '/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf')
BOLD_FONT_FILES = ('DejaVuSans-Bold.ttf', '/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf')

# colours: one per kind of layer, the same in all three panels
INK = (33, 37, 41)
MUTED = (108, 117, 125)
BG = (255, 255, 255)
PANEL = (246, 247, 249)
CONV = (222, 235, 247)      # convolutions: stem, embeddings, local perceptron
STAGE = (226, 240, 217)     # stages of RepMLPNet units
HEAD = (252, 228, 214)      # head
FC = (255, 242, 204)        # the channel perceptron's FC
GLOBAL = (234, 224, 245)    # global perceptron
NORM = (237, 237, 237)      # BN, reshapes
DEPLOY = (255, 230, 153)    # the merged FC


def load_font(size, bold=False):
    """A TrueType font (DejaVu Sans) at `size` px if one is found, else PIL's built-in font at that size."""
    for name in BOLD_FONT_FILES if bold else FONT_FILES:
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


class Canvas:
    """An ImageDraw with the few primitives the picture needs; records every label it writes."""

    def __init__(self, width, height):
        self.image = Image.new('RGB', (width, height), BG)
        self.draw = ImageDraw.Draw(self.image)
        self.fonts = {}
        self.labels = []

    def font(self, size, bold=False):
        if (size, bold) not in self.fonts:
            self.fonts[size, bold] = load_font(size, bold)
        return self.fonts[size, bold]

    def text(self, xy, text, size=15, bold=False, fill=INK, anchor='mm', align='center'):
        """Write `text` (may hold newlines) at `xy`; `anchor` as in PIL ('mm': centred)."""
        self.labels.append(text)
        self.draw.multiline_text(xy, text, font=self.font(size, bold), fill=fill, anchor=anchor, align=align,
                                 spacing=4)

    def box(self, x0, y0, x1, y1, text='', fill=NORM, size=15, bold=False, outline=INK, width=2, radius=8):
        """A rounded box with `text` centred in it; returns its box (x0, y0, x1, y1)."""
        self.draw.rounded_rectangle((x0, y0, x1, y1), radius=radius, fill=fill, outline=outline, width=width)
        if text:
            self.text(((x0 + x1) / 2, (y0 + y1) / 2), text, size=size, bold=bold)
        return x0, y0, x1, y1

    def arrow(self, points, fill=INK, width=2, head=9):
        """A polyline through `points` with an arrow head at the last point."""
        self.draw.line(points, fill=fill, width=width, joint='curve')
        (xa, ya), (xb, yb) = points[-2], points[-1]
        length = max(((xb - xa) ** 2 + (yb - ya) ** 2) ** 0.5, 1e-6)
        ux, uy = (xb - xa) / length, (yb - ya) / length
        left = (xb - head * ux - head * 0.55 * uy, yb - head * uy + head * 0.55 * ux)
        right = (xb - head * ux + head * 0.55 * uy, yb - head * uy - head * 0.55 * ux)
        self.draw.polygon([(xb, yb), left, right], fill=fill)

    def operator(self, cx, cy, symbol, r=15):
        """A circled + (sum) or x (product) centred at (cx, cy), drawn with lines so that any font will do."""
        self.draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=BG, outline=INK, width=2)
        d = r * 0.55 if symbol == '+' else r * 0.4
        if symbol == '+':
            self.draw.line((cx - d, cy, cx + d, cy), fill=INK, width=3)
            self.draw.line((cx, cy - d, cx, cy + d), fill=INK, width=3)
        else:
            self.draw.line((cx - d, cy - d, cx + d, cy + d), fill=INK, width=3)
            self.draw.line((cx - d, cy + d, cx + d, cy - d), fill=INK, width=3)
        self.labels.append(symbol)

    def block_arrow(self, x0, y0, x1, y1, fill=DEPLOY):
        """A wide arrow pointing right, filling the box (x0, y0, x1, y1)."""
        ym, inset, head = (y0 + y1) / 2, (y1 - y0) * 0.22, (y1 - y0) * 0.7
        points = [(x0, y0 + inset), (x1 - head, y0 + inset), (x1 - head, y0 - 6), (x1, ym), (x1 - head, y1 + 6),
                  (x1 - head, y1 - inset), (x0, y1 - inset)]
        self.draw.polygon(points, fill=fill, outline=INK, width=2)


def mid_right(b):
    return b[2], (b[1] + b[3]) / 2


def mid_left(b):
    return b[0], (b[1] + b[3]) / 2


def mid_top(b):
    return (b[0] + b[2]) / 2, b[1]


def mid_bottom(b):
    return (b[0] + b[2]) / 2, b[3]


def stage_table(config):
    """One dict per stage with what the picture shows of it, all read from `config`."""
    model = config.MODEL
    size = config.DATA.IMAGE_SIZE
    stages = []
    for i, (channels, h, w, units, sets) in enumerate(zip(model.CHANNELS, model.HEIGHTS, model.WIDTHS,
                                                          model.NUM_BLOCKS, model.SHARESETS_NUMS)):
        side = size // (PATCH_SIZE * 2 ** i)
        stages.append(dict(index=i + 1, channels=channels, map=side, h=h, w=w, units=units, sets=sets,
                           parts=(side // h) * (side // w)))
    return stages


def draw_hierarchy(canvas, config, stages, top):
    """Panel (1): stem -> stages with embeddings between them -> head."""
    model = config.MODEL
    canvas.draw.rectangle((10, top, WIDTH - 10, top + 330), fill=PANEL)
    canvas.text((24, top + 14), f'(1) {model.NAME}: hierarchy', size=20, bold=True, anchor='la')
    size = config.DATA.IMAGE_SIZE
    y0, y1 = top + 60, top + 235
    gap = 22
    widths = [96, 134] + sum([[178, 82] for _ in stages], [])[:-1] + [138]
    x = (WIDTH - sum(widths) - gap * (len(widths) - 1)) / 2
    boxes = []

    def place(width, text, fill, size=14, bold=False):
        nonlocal x
        b = canvas.box(x, y0, x + width, y1, text, fill=fill, size=size, bold=bold)
        if boxes:
            canvas.arrow([mid_right(boxes[-1]), mid_left(b)])
        boxes.append(b)
        x += width + gap
        return b

    place(widths[0], f'image\n3 x {size}\nx {size}', BG)
    place(widths[1], f'stem\n(conv_embedding)\n{PATCH_SIZE}x{PATCH_SIZE} conv,\nstride {PATCH_SIZE}\nBN, ReLU',
          CONV, size=13)
    for i, stage in enumerate(stages):
        b = place(178, '', STAGE)
        cx = (b[0] + b[2]) / 2
        canvas.text((cx, y0 + 22), f'stage {stage["index"]}', size=17, bold=True)
        canvas.text((cx, y0 + 48), f'{stage["units"]} x RepMLPNetUnit', size=14)
        lines = (f'C = {stage["channels"]}\n'
                 f'map {stage["map"]} x {stage["map"]}\n'
                 f'partition {stage["h"]} x {stage["w"]}\n'
                 f'({stage["parts"]} per map)\n'
                 f'share-sets S = {stage["sets"]}')
        canvas.text((cx, y0 + 118), lines, size=14)
        if i < len(stages) - 1:
            place(82, 'embed\n2x2 conv\nstride 2\nBN\nReLU', CONV, size=13)
    place(widths[-1], f'head\nBN\nglobal\navg pool\nFC -> {model.NUM_CLASSES}', HEAD, size=14)

    # what one unit is
    reparam = ', '.join(f'{k}x{k}' for k in model.REPARAM_CONV_K)
    canvas.text((WIDTH / 2, top + 268),
                'RepMLPNetUnit:   x + RepMLP block(BN(x)),   then   y + FFN(BN(y))   '
                'with FFN = 1x1 conv-BN (C -> 4C), GELU, 1x1 conv-BN (4C -> C)',
                size=15)
    canvas.text((WIDTH / 2, top + 300),
                f'input {size} x {size}; maps are 1/{PATCH_SIZE}, 1/{PATCH_SIZE * 2}, 1/{PATCH_SIZE * 4}, '
                f'1/{PATCH_SIZE * 8} of it; local perceptron kernels {reparam}; '
                f'each map is cut into h x w partitions that share one FC per share-set',
                size=14, fill=MUTED)


def draw_block(canvas, config, stage, top, bottom):
    """Panels (2) and (3): one RepMLP block in training-time form, locality_injection(), the deploy form."""
    C, h, w, S = stage['channels'], stage['h'], stage['w'], stage['sets']
    split = 1080
    canvas.draw.rectangle((10, top, split - 8, bottom), fill=PANEL)
    canvas.draw.rectangle((split + 8, top, WIDTH - 10, bottom), fill=PANEL)
    canvas.text((24, top + 14), '(2) RepMLP block, training-time form', size=20, bold=True, anchor='la')
    canvas.text((24, top + 44), f'drawn for stage {stage["index"]}: C = {C} channels, partitions h x w = {h} x {w}, '
                f'S = {S} share-sets', size=15, fill=MUTED, anchor='la')
    yc = top + 270
    x_in = canvas.box(30, yc - 38, 150, yc + 38, f'x\n[N, {C}, H, W]', fill=BG, size=14)
    part = canvas.box(185, yc - 55, 345, yc + 55,
                      f'partition\ninto {h} x {w}\n-> [S, M, {h}x{w}]\nS = {S},\nM = N*C/S*parts', fill=NORM,
                      size=13)
    canvas.arrow([mid_right(x_in), mid_left(part)])
    plus_x = draw_branches(canvas, stage, list(config.MODEL.REPARAM_CONV_K), part, yc)
    draw_merge_and_gate(canvas, stage, x_in, plus_x, yc, top + 115)
    canvas.text((545, bottom - 38),
                'Each branch works on every h x w partition on its own; the C/S channels of a share-set and all\n'
                'partitions share its FC and kernels; BN statistics are per share-set.  The branches are summed.',
                size=13, fill=MUTED)
    draw_deploy_form(canvas, stage, split + 24, top, yc)


def draw_branches(canvas, stage, kernels, part, yc):
    """The channel perceptron's fc3 + BN on top and one conv + BN branch per kernel below, from the partitioned
    input `part` to their sum at height `yc`; returns the x of the sum."""
    S, area = stage['sets'], stage['h'] * stage['w']
    rows = ['fc'] + kernels
    spacing = min(86, 330 / max(len(rows), 1))
    first = yc - spacing * (len(rows) - 1) / 2
    ys = [first + spacing * i for i in range(len(rows))]
    plus_x, plus_y = 760, yc
    for row, y in zip(rows, ys):
        if row == 'fc':
            op = canvas.box(420, y - 30, 620, y + 30,
                            f'fc3: {S} x FC {area} -> {area}\n(no bias; one per share-set)', fill=FC, size=13)
        else:
            op = canvas.box(420, y - 30, 620, y + 30,
                            f'repconv{row}: {row}x{row} conv\ndepthwise over S = {S}', fill=CONV, size=13)
        bn = canvas.box(640, y - 22, 700, y + 22, 'BN', fill=NORM, size=14)
        canvas.arrow([mid_right(part), (385, yc), (385, y), mid_left(op)])
        canvas.arrow([mid_right(op), mid_left(bn)])
        canvas.arrow([mid_right(bn), (730, y), (730, plus_y), (plus_x - 15, plus_y)]
                     if abs(y - plus_y) > 1 else [mid_right(bn), (plus_x - 15, plus_y)])
    canvas.operator(plus_x, plus_y, '+')
    canvas.text((520, ys[0] - 48), 'channel perceptron', size=15, bold=True)
    if kernels:
        canvas.text((520, ys[-1] + 48), f'local perceptron (k in {kernels})', size=15, bold=True)
    return plus_x


def draw_merge_and_gate(canvas, stage, x_in, plus_x, yc, gate_y):
    """The merge of the partitions after the sum at `plus_x`, the output, and the global perceptron's gate (at
    height `gate_y`) from the block input `x_in` onto it."""
    C = stage['channels']
    merge = canvas.box(795, yc - 40, 925, yc + 40, f'merge\npartitions\n-> [N, {C}, H, W]', fill=NORM, size=13)
    canvas.arrow([(plus_x + 15, yc), mid_left(merge)])
    times_x = 965
    canvas.operator(times_x, yc, 'x')
    canvas.arrow([mid_right(merge), (times_x - 15, yc)])
    out = canvas.box(1000, yc - 25, 1055, yc + 25, 'out', fill=BG, size=14)
    canvas.arrow([(times_x + 15, yc), mid_left(out)])
    gp = canvas.box(230, gate_y - 32, 880, gate_y + 32,
                    f'global perceptron: avg pool -> 1x1 conv {C} -> {C // 4}, ReLU -> 1x1 conv {C // 4} -> {C}, '
                    f'sigmoid\n= gate [N, {C}, 1, 1] (channel weights)', fill=GLOBAL, size=13)
    canvas.arrow([mid_top(x_in), (90, gate_y), mid_left(gp)])
    canvas.arrow([mid_right(gp), (times_x, gate_y), (times_x, yc - 15)])


def draw_deploy_form(canvas, stage, x0, top, yc):
    """Panel (3), from `x0`: the locality_injection() arrow and the deploy form's steps."""
    C, h, w, S = stage['channels'], stage['h'], stage['w'], stage['sets']
    area = h * w
    canvas.text((x0, top + 14), '(3) deploy form', size=20, bold=True, anchor='la')
    canvas.block_arrow(x0, yc - 34, x0 + 190, yc + 34)
    canvas.text((x0 + 85, yc), 'locality_injection()', size=14, bold=True)
    canvas.text((x0 + 95, yc + 70),
                'folds the BNs and the\nconv kernels into fc3\n(exact): no conv\nbranches, no fc3 BN',
                size=13, fill=MUTED)
    cx, bw = (x0 + 220 + WIDTH - 24) / 2, (WIDTH - 24 - x0 - 220) / 2
    y = top + 60
    steps = [(f'x  [N, {C}, H, W]', BG, 36), (f'partition into {h} x {w}', NORM, 36),
             (f'fc3:\n{S} x FC {area} -> {area}\nwith bias', DEPLOY, 96),
             ('merge partitions', NORM, 36), ('x', None, 30), ('out', BG, 36)]
    previous = None
    for text, fill, height in steps:
        if fill is None:
            canvas.operator(cx, y + height / 2, 'x')
            b = (cx - 15, y, cx + 15, y + height)
            canvas.text((cx + 22, y + height / 2), 'gate\n(global\nperceptron\nunchanged)', size=12, fill=MUTED,
                        anchor='lm', align='left')
        else:
            big = fill is DEPLOY
            b = canvas.box(cx - bw, y, cx + bw, y + height, text, fill=fill, size=16 if big else 13, bold=big,
                           width=3 if big else 2)
        if previous:
            canvas.arrow([mid_bottom(previous), mid_top(b)])
        previous = b
        y += height + 22
    canvas.text((cx, y + 6), 'same outputs as (2) in eval mode', size=13)


def draw_overview(config):
    """The overview picture of the RepMLPNet that `config` describes, as (PIL image, list of its labels)."""
    canvas = Canvas(WIDTH, HEIGHT)
    stages = stage_table(config)
    draw_hierarchy(canvas, config, stages, top=10)
    # the block is drawn for the stage holding most units (stage 3 in every released variant)
    stage = max(stages, key=lambda s: s['units'])
    draw_block(canvas, config, stage, top=352, bottom=HEIGHT - 12)
    return canvas.image, canvas.labels


def render_info():
    """What the rendered pixels depend on besides the config: the font file and the FreeType build."""
    font = load_font(15)
    name = os.path.basename(getattr(font, 'path', '') or 'PIL default')
    return f'{name}; freetype {features.version("freetype2")}'


def save_overview(config, path):
    """Draw the overview of `config` and write it to `path` as PNG, with its labels in a text chunk."""
    image, labels = draw_overview(config)
    info = PngImagePlugin.PngInfo()
    info.add_text('labels', '\n'.join(labels).replace('\n', ' | '))
    info.add_text('render', render_info())
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    image.save(path, pnginfo=info, optimize=True)
    return image


def main(argv=None):
    """Command-line entry: returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-cfg', default=DEFAULT_CFG, help='model config (default configs/repmlp_b_224.yaml)')
    parser.add_argument('-output', default=DEFAULT_OUTPUT, help='PNG to write (default docs/repmlpnet_overview.png)')
    args = parser.parse_args(argv)
    save_overview(get_config(args.cfg), args.output)
    print(f'wrote {args.output}')
    return 0


if __name__ == '__main__':
    sys.exit(run_cli(main))
