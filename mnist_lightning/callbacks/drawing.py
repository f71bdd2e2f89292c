"""The figures' pictures, drawn with PIL: image grids with labels, and a confusion matrix.

PIL draws in milliseconds, headless; matplotlib through torchmetrics' `plot()` took ~0.35 s per epoch on a
2-core CPU, a fifth of a whole MNIST epoch. Each picture is a `Layout` first (sizes, tiles, texts), so
tests can check what is drawn without reading pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

MISTAKE_COLOUR = "red"


FONT_SIZE = 15  # pixels; every label is measured with the font, so cells grow to fit the class names


MAX_NAME = 24  # characters of a class name shown; longer ones end in "..."


def render(figure: Image.Image) -> np.ndarray:
    """A PIL image as an RGB uint8 array (H, W, 3), as TensorBoard's add_image takes it."""
    return np.asarray(figure.convert("RGB"))


def font(size: int = FONT_SIZE) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled scalable font: the same on every machine, no system fonts needed."""
    return ImageFont.load_default(size=size)


def _name(name: str) -> str:
    return name if len(name) <= MAX_NAME else name[: MAX_NAME - 3] + "..."


Box = tuple[int, int, int, int]  # left, top, right (exclusive), bottom (exclusive), in pixels


@dataclass(frozen=True)
class Text:
    """One label as it is drawn: anchored at `xy` (PIL anchor), or rotated 90 degrees into `box`."""

    text: str
    xy: tuple[int, int]
    anchor: str
    box: Box  # the pixels it may ink
    fill: str | tuple[int, int, int] = "black"
    rotated: bool = False


@dataclass
class Layout:
    """Where everything of a figure goes, computed from the font's measurements before drawing.

    Tests check that every `texts` box lies inside `size` and that no two overlap; the drawing
    functions draw exactly these, so what is tested is what TensorBoard shows.
    """

    size: tuple[int, int]
    texts: list[Text] = field(default_factory=list)
    regions: list[Box] = field(default_factory=list)  # non-text ink: image tiles, frames, matrix cells


def _line_height(f: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> int:
    ascent, descent = f.getmetrics()
    return ascent + descent


def _text(f: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str, xy: tuple[int, int], anchor: str,
          fill: str | tuple[int, int, int] = "black") -> Text:
    left, top, right, bottom = f.getbbox(text, anchor=anchor)
    return Text(text, xy, anchor, (xy[0] + left, xy[1] + top, xy[0] + right, xy[1] + bottom), fill)


def _rotated_size(f: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
    """(width, height) of `text` turned 90 degrees: the line height wide, the text length high."""
    return _line_height(f), max(1, int(math.ceil(f.getbbox(text)[2])))


def _rotated(f: ImageFont.ImageFont | ImageFont.FreeTypeFont, text: str, centre_x: float, bottom: int,
             fill: str | tuple[int, int, int] = "black") -> Text:
    """`text` reading upwards, centred on `centre_x`, ending at `bottom`."""
    width, height = _rotated_size(f, text)
    left = int(round(centre_x - width / 2))
    return Text(text, (left, bottom - height), "la", (left, bottom - height, left + width, bottom), fill, rotated=True)


def _draw(image: Image.Image, layout: Layout, f: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> None:
    draw = ImageDraw.Draw(image)
    for t in layout.texts:
        if not t.rotated:
            draw.text(t.xy, t.text, fill=t.fill, font=f, anchor=t.anchor)
            continue
        width, height = t.box[2] - t.box[0], t.box[3] - t.box[1]
        mask = Image.new("L", (height, width), 0)  # the text level, then turned to read upwards
        ImageDraw.Draw(mask).text((0, 0), t.text, fill=255, font=f, anchor="la")
        image.paste(t.fill, t.box, mask.rotate(90, expand=True))


def _cells_layout(n: int, height: int, width: int, labels: Sequence[Sequence[tuple[str, Any]]], lines: int, legend: str,
                  widest: Sequence[str], columns: int, zoom: int, frame: int,
                  f: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> tuple[Layout, list[tuple[int, int]]]:
    """A legend line, then `n` cells `columns` wide: each cell's `lines` label lines (text, fill) centred above its
    image. Cells are as wide as the widest of `widest` (and the image), so no label is cut; each image's
    region reaches `frame` px beyond the tile (a frame drawn around it is part of it)."""
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    line, pad = _line_height(f) + 2, 6
    text_width = max(f.getlength(text) for text in widest)
    cell_w = int(math.ceil(max(width * zoom, text_width))) + 2 * pad
    cell_h = pad + lines * line + 4 + height * zoom + pad
    header = pad + line + pad
    size = (max(columns * cell_w, int(math.ceil(f.getlength(legend))) + 2 * pad), header + rows * cell_h)
    layout = Layout(size)
    layout.texts.append(_text(f, legend, (size[0] // 2, pad), "ma"))
    tiles = []
    for i in range(n):
        left, top = (i % columns) * cell_w, header + (i // columns) * cell_h
        for k, (text, fill) in enumerate(labels[i]):
            layout.texts.append(_text(f, text, (left + cell_w // 2, top + pad + k * line), "ma", fill))
        tile = (left + (cell_w - width * zoom) // 2, top + pad + lines * line + 4)
        tiles.append(tile)
        layout.regions.append((tile[0] - frame, tile[1] - frame, tile[0] + width * zoom + frame,
                               tile[1] + height * zoom + frame))
    return layout, tiles


def grid_layout(n: int, height: int, width: int, preds: Sequence[int], targets: Sequence[int], classes: Sequence[str],
                probs: Sequence[float] | None = None, columns: int = 8, zoom: int = 2,
                f: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None) -> tuple[Layout, list[tuple[int, int]]]:
    """The layout of `image_grid`, and the top-left corner of each image tile.

    Each cell holds the predicted class, the true class (and the probability) on lines of their own
    above the image, centred; cells are as wide as the longest class name, so nothing is cut.
    """
    names = [_name(c) for c in classes]
    legend = ("above each image: predicted class, true class" + (", probability" if probs is not None else "")
              + "; mistakes in red")
    labels = []
    for i in range(n):
        colour = MISTAKE_COLOUR if preds[i] != targets[i] else "black"
        cell = [(names[preds[i]], colour), (names[targets[i]], (90, 90, 90))]
        if probs is not None:
            cell.append((f"{probs[i]:.0%}", colour))
        labels.append(cell)
    # The red frame (drawn 2 px outside the tile) is part of the tile's region.
    lines = 2 + (probs is not None)
    return _cells_layout(n, height, width, labels, lines, legend, [*names, "100%"], columns, zoom, 3, f or font())


def image_grid(images: torch.Tensor, preds: Sequence[int], targets: Sequence[int], classes: Sequence[str],
               probs: Sequence[float] | None = None, columns: int = 8, zoom: int = 2) -> Image.Image:
    """Images (N, 1, H, W) tiled `columns` wide, each labelled with its predicted and true class (and `probs`);
    mistakes in red.

    Drawn with PIL rather than matplotlib: a grid of 32 labelled digits takes milliseconds, not a
    large part of a second.
    """
    n, _, height, width = images.shape
    f = font()
    layout, tiles = grid_layout(n, height, width, preds, targets, classes, probs, columns, zoom, f)
    grid = Image.new("RGB", layout.size, "white")
    _draw(grid, layout, f)
    draw = ImageDraw.Draw(grid)
    shown = _shown(images)  # each image scaled to its own range, whatever the normalisation of the run
    for i, (left, top) in enumerate(tiles):
        digit = Image.fromarray(shown[i].numpy()).resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        grid.paste(digit, (left, top))
        if preds[i] != targets[i]:
            draw.rectangle((left - 2, top - 2, left + width * zoom + 1, top + height * zoom + 1),
                           outline=MISTAKE_COLOUR, width=2)
    return grid


def sample_layout(n: int, height: int, width: int, labels: Sequence[int], classes: Sequence[str], legend: str,
                  columns: int = 8, zoom: int = 2,
                  f: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
                  ) -> tuple[Layout, list[tuple[int, int]]]:
    """The layout of `sample_grid`: a legend, then each image under its class name, cells as wide as the longest."""
    names = [_name(c) for c in classes]
    cells = [[(names[labels[i]], "black")] for i in range(n)]
    return _cells_layout(n, height, width, cells, 1, legend, names, columns, zoom, 0, f or font())


def _shown(images: torch.Tensor) -> torch.Tensor:
    """Images (N, 1, H, W) as uint8 (N, H, W) for display: each scaled to its own range, dark ink on white."""
    n, _, height, width = images.shape
    flat = images.detach().float().cpu().reshape(n, -1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    return (255 * (1 - (flat - low) / (high - low).clamp_min(1e-12))).round().to(torch.uint8).reshape(n, height, width)


def sample_grid(images: torch.Tensor, labels: Sequence[int], classes: Sequence[str], legend: str, columns: int = 8,
                zoom: int = 2) -> Image.Image:
    """Images (N, 1, H, W) tiled `columns` wide, each under its class name, with a `legend` line on top."""
    n, _, height, width = images.shape
    f = font()
    layout, tiles = sample_layout(n, height, width, labels, classes, legend, columns, zoom, f)
    grid = Image.new("RGB", layout.size, "white")
    _draw(grid, layout, f)
    shown = _shown(images)
    for i, corner in enumerate(tiles):
        tile = Image.fromarray(shown[i].numpy()).resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        grid.paste(tile, corner)
    return grid


def confusion_layout(counts: torch.Tensor, classes: Sequence[str],
                     f: ImageFont.ImageFont | ImageFont.FreeTypeFont | None = None,
                     ) -> tuple[Layout, int, tuple[int, int]]:
    """The layout of `confusion_figure`, its cell side and the matrix's top-left corner.

    Row labels (true class) are right-aligned left of the rows; column labels (predicted class) sit
    above the columns, turned to read upwards when they are wider than a cell, so long names never
    collide; cells fit the largest count.
    """
    f = f or font()
    n = counts.shape[0]
    names = [_name(c) for c in classes]
    line = _line_height(f)
    pad, gap = 10, 6
    longest = int(math.ceil(max(f.getlength(name) for name in names)))
    widest_count = max(f.getlength(str(int(v))) for v in counts.flatten().tolist()) if counts.numel() else 0
    cell = int(max(40, math.ceil(widest_count) + 10, line + 10))
    title, x_title, y_title = "Validation confusion matrix", "predicted", "true"
    left = pad + line + gap + longest + gap
    upright = longest + gap <= cell  # short names (digits) fit level above their column; others read upwards
    top = pad + line + gap + line + gap + (line if upright else longest) + gap
    width = max(left + n * cell + pad, int(math.ceil(f.getlength(title))) + 2 * pad)
    layout = Layout((width, top + n * cell + pad))
    layout.texts.append(_text(f, title, (width // 2, pad), "ma"))
    layout.texts.append(_text(f, x_title, (left + n * cell // 2, pad + line + gap), "ma"))
    _, true_height = _rotated_size(f, y_title)
    layout.texts.append(_rotated(f, y_title, pad + line / 2, top + (n * cell + true_height) // 2))
    for j, name in enumerate(names):
        if upright:
            layout.texts.append(_text(f, name, (left + j * cell + cell // 2, top - gap), "md"))
        else:
            layout.texts.append(_rotated(f, name, left + j * cell + cell / 2, top - gap))
        layout.texts.append(_text(f, name, (left - gap, top + j * cell + cell // 2), "rm"))
    colours = _cell_colours(counts)
    for i in range(n):
        for j in range(n):
            layout.regions.append((left + j * cell, top + i * cell, left + (j + 1) * cell, top + (i + 1) * cell))
            if int(counts[i, j]):
                centre = (left + j * cell + cell // 2, top + i * cell + cell // 2)
                layout.texts.append(_text(f, str(int(counts[i, j])), centre, "mm", colours[i][j][1]))
    return layout, cell, (left, top)


def _cell_colours(counts: torch.Tensor) -> list[list[tuple[tuple[int, int, int], str]]]:
    """(fill, ink) of each cell: blue shades on the diagonal, red off it.

    Off-diagonal counts are scaled against the largest off-diagonal count, so mistakes stand out
    even though the diagonal is ~100x larger; the diagonal is shaded against its own maximum.
    """
    off = counts.clone().fill_diagonal_(0)
    off_max, diag_max = max(1, int(off.max())), max(1, int(counts.diagonal().max()))
    colours = []
    for i, row in enumerate(counts.tolist()):
        colours.append([])
        for j, value in enumerate(row):
            shade = value / (diag_max if i == j else off_max)
            fill = (int(255 * (1 - shade)), int(255 * (1 - 0.6 * shade)), 255) if i == j \
                else (255, int(255 * (1 - shade)), int(255 * (1 - shade)))
            colours[-1].append((fill, "white" if shade > 0.6 else "black"))
    return colours


def confusion_figure(matrix: torch.Tensor, classes: Sequence[str]) -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted) as a heatmap with its counts.

    Drawn with PIL rather than torchmetrics' matplotlib `plot()`: the same picture in a few
    milliseconds instead of ~0.2 s per epoch, which on a CPU was a fifth of a whole MNIST epoch.
    """
    counts = matrix.detach().cpu().long()
    f = font()
    layout, cell, (left, top) = confusion_layout(counts, classes, f)
    image = Image.new("RGB", layout.size, "white")
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(_cell_colours(counts)):
        for j, (fill, _) in enumerate(row):
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=fill, outline=(220, 220, 220))
    _draw(image, layout, f)  # labels and counts, over the cells
    return image
