"""The README's picture of a run: its loss and accuracy curves, its confusion matrix and its predictions.

    python scripts/readme_figure.py --run lightning_logs/version_0 --output docs/images/run.png
    python scripts/readme_figure.py --fit --output docs/images/run.png     # trains a 5-epoch run first

Everything comes from the run's TensorBoard event files, the way TensorBoard shows it: the epoch-level
scalars `train/loss`, `train/acc`, `val/loss` and `val/acc` (drawn against the global step), and the
last epoch's `val/confusion_matrix` and `val/predictions` images (mnist_lightning.callbacks.ValidationFigures,
which the default config, mnist_lightning/default.yaml, turns on). The curves are drawn with PIL, like the
figures themselves, so the script needs nothing beyond the project's own dependencies.

`--fit` runs `python -m mnist_lightning fit --data.data_dir DIR --trainer.max_epochs 5` in a temporary
folder (DIR: `--data-dir`, by default ../shared/data/mnist beside the project) and draws that run;
docs/images/run.png is made this way from the official MNIST files.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT / ".." / "shared" / "data" / "mnist"
SCALARS = ("train/loss", "val/loss", "train/acc", "val/acc")
CONFUSION, PREDICTIONS = "val/confusion_matrix", "val/predictions"
MAKES_IT = "python -m mnist_lightning fit (the default config, mnist_lightning/default.yaml)"
FIGURE_TAG_SOURCE = "mnist_lightning.callbacks.ValidationFigures, a callback of mnist_lightning/default.yaml"

FONT_SIZE = 15  # pixels, as in the TensorBoard figures
COLOURS = {"train": (31, 119, 180), "val": (255, 127, 14)}  # the blue and orange readers know from matplotlib
GRID, AXIS, GREY = (228, 228, 228), (120, 120, 120), (90, 90, 90)
GAP = 24  # pixels between the panels
SUPERSAMPLE = 4  # curves are drawn this many times larger, then scaled down: smooth lines without matplotlib


class FigureError(Exception):
    """A run that cannot be drawn: the message names what is missing and the command that makes it."""


def font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


# --- reading the run --------------------------------------------------------------------------------

def load_run(run_dir: Path,
             predictions: bool = True) -> tuple[dict[str, list[tuple[int, float]]], dict[str, Image.Image]]:
    """The four epoch-level curves as (step, value) lists, and the last step's figure images."""
    if not run_dir.is_dir():
        raise FigureError(f"{run_dir} is not a folder: give a run folder such as lightning_logs/version_0, "
                          f"made by {MAKES_IT}")
    if not any(p.name.startswith("events.out.tfevents") for p in run_dir.iterdir()):
        raise FigureError(f"{run_dir} has no TensorBoard event files (events.out.tfevents.*): "
                          f"make a run with {MAKES_IT}")
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    curves = {}
    for tag in SCALARS:
        if tag not in tags["scalars"]:
            raise FigureError(f"the run in {run_dir} has no '{tag}' scalar: it is logged by {MAKES_IT}")
        by_step = {e.step: e.value for e in events.Scalars(tag)}  # a resumed run may repeat a step: keep the latest
        curves[tag] = sorted(by_step.items())
    images = {}
    for tag in (CONFUSION, PREDICTIONS) if predictions else (CONFUSION,):
        if tag not in tags["images"]:
            raise FigureError(f"the run in {run_dir} has no '{tag}' image: it is logged by {FIGURE_TAG_SOURCE} "
                              f"({MAKES_IT})")
        last = max(events.Images(tag), key=lambda e: e.step)
        images[tag] = Image.open(io.BytesIO(last.encoded_image_string)).convert("RGB")
    return curves, images


# --- the line charts ----------------------------------------------------------------------------------

def nice_ticks(low: float, high: float, most: int = 5) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten) inside [low, high], about `most` of them."""
    span = high - low
    if span <= 0:
        return [low]
    raw = span / max(1, most - 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    return [first + k * step for k in range(int((high - first) / step + 1e-9) + 1)]


def step_label(value: float, ticks: Sequence[float]) -> str:
    if max(ticks) >= 1000 and all(t % 1000 == 0 for t in ticks):
        return f"{value / 1000:g}k" if value else "0"
    return f"{value:g}"


def percent_label(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step * 100) + 1e-9))
    return f"{value:.{decimals}%}"


def plain_label(value: float, ticks: Sequence[float]) -> str:
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1.0
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def line_chart(series: dict[str, list[tuple[int, float]]], title: str, size: tuple[int, int],
               percent: bool = False) -> Image.Image:
    """`series` (legend name -> (step, value) points) as a line chart with axes, ticks, a legend and a title."""
    f = font()
    ascent, descent = f.getmetrics()
    line = ascent + descent
    width, height = size
    label = percent_label if percent else plain_label

    values = [v for points in series.values() for _, v in points]
    steps = [s for points in series.values() for s, _ in points]
    low, high = min(values), max(values)
    pad = 0.08 * (high - low) or 0.05 * abs(high) or 0.05
    y_low, y_high = low - pad, high + pad
    x_low, x_high = 0, max(steps) * 1.04
    y_ticks = nice_ticks(y_low, y_high, most=6)
    x_ticks = nice_ticks(x_low, max(steps), most=6)
    y_labels = [label(t, y_ticks) for t in y_ticks]

    # The plot area: the title and legend above, the y tick labels left, the x tick labels and "step" below.
    left = 6 + int(math.ceil(max(f.getlength(s) for s in y_labels))) + 8
    top = 4 + line + 8 + line + 10
    right = width - 14
    bottom = height - (6 + line + 4 + line + 6)

    def xy(step: float, value: float) -> tuple[float, float]:
        return (left + (step - x_low) / (x_high - x_low) * (right - left),
                bottom - (value - y_low) / (y_high - y_low) * (bottom - top))

    # Grid, axes and curves, drawn large and scaled down (anti-aliased); the text after, at full resolution.
    s = SUPERSAMPLE
    big = Image.new("RGB", (width * s, height * s), "white")
    draw = ImageDraw.Draw(big)
    for t in y_ticks:
        y = xy(0, t)[1] * s
        if y > (bottom - 4) * s:  # a grid line just above the x axis would read as a double axis
            continue
        draw.line([(left * s, y), (right * s, y)], fill=GRID, width=s)
    draw.line([(left * s, top * s), (left * s, bottom * s), (right * s, bottom * s)], fill=AXIS, width=s)
    for t in x_ticks:
        x = xy(t, 0)[0] * s
        draw.line([(x, bottom * s), (x, (bottom + 4) * s)], fill=AXIS, width=s)
    for name, points in series.items():
        colour = COLOURS[name]
        coords = [(x * s, y * s) for x, y in (xy(step, value) for step, value in points)]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=int(2.5 * s), joint="curve")
        r = 3.5 * s
        for x, y in coords:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    chart = big.resize(size, Image.Resampling.LANCZOS)

    draw = ImageDraw.Draw(chart)
    draw.text((width // 2, 4), title, fill="black", font=f, anchor="ma")
    # The legend, centred under the title: a short stroke of each colour, then its name.
    entries = [(name, f.getlength(name)) for name in series]
    stroke, space = 22, 18
    total = sum(stroke + 6 + w for _, w in entries) + space * (len(entries) - 1)
    x = (width - total) / 2
    legend_y = 4 + line + 8 + line // 2
    for name, w in entries:
        draw.line([(x, legend_y), (x + stroke, legend_y)], fill=COLOURS[name], width=3)
        draw.text((x + stroke + 6, legend_y), name, fill=GREY, font=f, anchor="lm")
        x += stroke + 6 + w + space
    for t, text in zip(y_ticks, y_labels, strict=True):
        draw.text((left - 8, xy(0, t)[1]), text, fill=GREY, font=f, anchor="rm")
    for t in x_ticks:
        draw.text((xy(t, 0)[0], bottom + 6), step_label(t, x_ticks), fill=GREY, font=f, anchor="ma")
    draw.text(((left + right) // 2, height - 6), "step", fill=GREY, font=f, anchor="md")
    return chart


# --- the whole picture ----------------------------------------------------------------------------------

def compose(curves: dict[str, list[tuple[int, float]]], images: dict[str, Image.Image]) -> Image.Image:
    """Curves stacked on the left, the confusion matrix beside them, the predictions grid on the right, a title
    above."""
    f = font()
    ascent, descent = f.getmetrics()
    confusion = images[CONFUSION]
    predictions = images.get(PREDICTIONS)
    panel_h = max(confusion.height, predictions.height if predictions else 0)
    chart_size = (310, (panel_h - GAP // 2) // 2)
    loss = line_chart({"train": curves["train/loss"], "val": curves["val/loss"]}, "Loss (cross-entropy)", chart_size)
    acc = line_chart({"train": curves["train/acc"], "val": curves["val/acc"]}, "Accuracy", chart_size, percent=True)

    epochs, final = len(curves["val/acc"]), curves["val/acc"][-1][1]
    title = (f"python -m mnist_lightning fit, {epochs} epochs: the curves and the last epoch's TensorBoard figures "
             f"(validation accuracy {final:.2%})")
    panels = [chart_size[0], confusion.width] + ([predictions.width] if predictions else [])
    margin, header = 16, 16 + ascent + descent + 14
    width = max(2 * margin + sum(panels) + GAP * (len(panels) - 1), int(f.getlength(title)) + 2 * margin)
    figure = Image.new("RGB", (width, header + panel_h + margin), "white")
    draw = ImageDraw.Draw(figure)
    draw.text((width // 2, 16), title, fill="black", font=f, anchor="ma")
    x = (width - (sum(panels) + GAP * (len(panels) - 1))) // 2
    figure.paste(loss, (x, header))
    figure.paste(acc, (x, header + panel_h - acc.height))
    x += chart_size[0] + GAP
    for image in [confusion] + ([predictions] if predictions else []):
        draw.line([(x - GAP // 2, header + 8), (x - GAP // 2, header + panel_h - 8)], fill=GRID, width=1)
        figure.paste(image, (x, header + (panel_h - image.height) // 2))
        x += image.width + GAP
    return figure


def save(figure: Image.Image, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours are plenty for flat charts and text, and make the file several times smaller.
    figure.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(output, optimize=True)


def fit(data_dir: Path, epochs: int, workdir: Path) -> Path:
    """Train a run in `workdir`, the way a user does, and return its folder."""
    cmd = [sys.executable, "-m", "mnist_lightning", "fit", "--data.data_dir", str(data_dir),
           "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false"]
    print(f"Training in a temporary folder: {' '.join(cmd[1:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    # The run's own output is kept back: the checkpoint paths it prints are gone once the figure is drawn.
    result = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print((result.stdout + result.stderr)[-4000:], file=sys.stderr)
        raise FigureError(f"the training run failed (the end of its output is above): {' '.join(cmd[1:])}")
    return workdir / "lightning_logs" / "version_0"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path,
                        help="a run folder with TensorBoard event files, e.g. lightning_logs/version_0")
    source.add_argument("--fit", action="store_true", help="train a run first (in a temporary folder) and draw it")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "run.png", help="the PNG to write")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="with --fit: the MNIST files")
    parser.add_argument("--epochs", type=int, default=5, help="with --fit: epochs to train (default 5)")
    parser.add_argument("--no-predictions", action="store_true", help="leave out the grid of validation predictions")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory(prefix="readme_figure_") as tmp:
            run_dir = fit(args.data_dir.resolve(), args.epochs, Path(tmp)) if args.fit else args.run
            curves, images = load_run(run_dir, predictions=not args.no_predictions)
            figure = compose(curves, images)
        save(figure, args.output)
    except FigureError as err:
        sys.exit(f"error: {err}")
    print(f"Wrote {args.output} ({figure.width} x {figure.height} px, {args.output.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
