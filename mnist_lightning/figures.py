"""TensorBoard figures at the end of each validation epoch: what the net gets wrong, at a glance.

Add `ValidationFigures` to the trainer's callbacks (configs/default.yaml does) and open the IMAGES
tab of `tensorboard --logdir lightning_logs`:

* ``val/predictions``: the first validation images (the same ones every epoch), each labelled
  ``predicted/true``; the mistakes are framed in red.
* ``val/confident_mistakes``: the wrong predictions the net was most sure of, over the whole
  validation set, labelled ``predicted/true`` and the predicted probability.
* ``val/confusion_matrix``: torchmetrics' `MulticlassConfusionMatrix` over the whole validation set
  (rows: true class, columns: predicted class).

Cheap by construction: the confusion matrix is updated from the predictions `validation_step`
returns; probabilities are recomputed only for the mistakes (a few per batch); the figures are drawn
once per epoch (or every `every_n_epochs`), on rank zero, never during the sanity check. All three
are drawn with PIL (milliseconds; headless, no window): matplotlib through torchmetrics' `plot()`
took ~0.35 s per epoch on a 2-core CPU, a fifth of a whole MNIST epoch. `seconds` holds the time
spent, so a benchmark can report it against the epoch time.

Under DDP the confusion matrix covers every rank's share of the validation set; the two image grids
show rank zero's share.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image, ImageDraw, ImageFont
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics.classification import MulticlassConfusionMatrix

MISTAKE_COLOUR = "red"


def render(figure: Image.Image) -> np.ndarray:
    """A PIL image as an RGB uint8 array (H, W, 3), as TensorBoard's add_image takes it."""
    return np.asarray(figure.convert("RGB"))


def _short(name: str, limit: int = 8) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "."


def image_grid(images: torch.Tensor, preds: Sequence[int], targets: Sequence[int], classes: Sequence[str],
               probs: Sequence[float] | None = None, columns: int = 8, zoom: int = 2) -> Image.Image:
    """Images (N, 1, H, W) tiled `columns` wide, each labelled `predicted/true` (and `probs`); mistakes framed in red.

    Drawn with PIL rather than matplotlib: a grid of 32 labelled digits takes milliseconds, not a
    large part of a second.
    """
    n, _, height, width = images.shape
    columns = max(1, min(columns, n))
    rows = max(1, math.ceil(n / columns))
    font = ImageFont.load_default(size=11)
    line = 13  # pixels per label line
    label = line * (1 if probs is None else 2)
    pad = 6
    cell_w, cell_h = width * zoom + 2 * pad, label + height * zoom + 2 * pad
    header = line + 2 * pad
    grid = Image.new("RGB", (columns * cell_w, header + rows * cell_h), "white")
    draw = ImageDraw.Draw(grid)
    legend = "predicted/true" + (", probability" if probs is not None else "") + "; mistakes in red"
    draw.text((grid.width / 2, pad), legend, fill="black", font=font, anchor="ma")

    # Each image is scaled to [0, 1] for display, whatever the normalisation of the run; dark ink on white.
    flat = images.detach().float().cpu().reshape(n, -1)
    low, high = flat.min(dim=1, keepdim=True).values, flat.max(dim=1, keepdim=True).values
    shown = (255 * (1 - (flat - low) / (high - low).clamp_min(1e-12))).round().to(torch.uint8).reshape(n, height, width)
    for i in range(n):
        left = (i % columns) * cell_w + pad
        top = header + (i // columns) * cell_h + pad
        wrong = preds[i] != targets[i]
        colour = MISTAKE_COLOUR if wrong else "black"
        text = f"{_short(classes[preds[i]])}/{_short(classes[targets[i]])}"
        if probs is not None:
            text += f"\n{probs[i]:.0%}"
        draw.multiline_text((left + width * zoom / 2, top), text, fill=colour, font=font, anchor="ma", align="center",
                            spacing=1)
        digit = Image.fromarray(shown[i].numpy()).resize((width * zoom, height * zoom), Image.Resampling.NEAREST)
        grid.paste(digit, (left, top + label))
        if wrong:
            draw.rectangle((left - 2, top + label - 2, left + width * zoom + 1, top + label + height * zoom + 1),
                           outline=MISTAKE_COLOUR, width=2)
    return grid


def confusion_figure(matrix: torch.Tensor, classes: Sequence[str], cell: int = 40) -> Image.Image:
    """The confusion matrix (rows: true class, columns: predicted) as a heatmap with its counts.

    Drawn with PIL rather than torchmetrics' matplotlib `plot()`: the same picture in a few
    milliseconds instead of ~0.2 s per epoch, which on a CPU was a fifth of a whole MNIST epoch.
    """
    counts = matrix.detach().cpu().long()
    n = counts.shape[0]
    labels = [_short(c, 12) for c in classes]
    font = ImageFont.load_default(size=12)
    pad, title_h = 8, 22
    label_w = 10 + 7 * max(len(label) for label in labels)
    left, top = pad + 16 + label_w, pad + title_h + 16 + label_w  # room for axis titles and labels
    image = Image.new("RGB", (left + n * cell + pad, top + n * cell + pad), "white")
    draw = ImageDraw.Draw(image)
    draw.text((image.width / 2, pad), "Validation confusion matrix", fill="black", font=font, anchor="ma")
    draw.text((left + n * cell / 2, pad + title_h), "predicted", fill="black", font=font, anchor="ma")
    draw.text((pad, top + n * cell / 2), "true", fill="black", font=font, anchor="lm")
    # Off-diagonal counts are scaled against the largest off-diagonal count, so mistakes stand out
    # even though the diagonal is ~100x larger; the diagonal is shaded against its own maximum.
    off = counts.clone().fill_diagonal_(0)
    off_max, diag_max = max(1, int(off.max())), max(1, int(counts.diagonal().max()))
    for j, label in enumerate(labels):
        x = left + j * cell + cell / 2
        draw.text((x, top - 4), label, fill="black", font=font, anchor="md")
        draw.text((left - 4, top + j * cell + cell / 2), label, fill="black", font=font, anchor="rm")
    for i in range(n):
        for j in range(n):
            value = int(counts[i, j])
            shade = value / (diag_max if i == j else off_max)
            colour = (int(255 * (1 - shade)), int(255 * (1 - 0.6 * shade)), 255) if i == j else (255, int(255 * (1 - shade)), int(255 * (1 - shade)))
            box = (left + j * cell, top + i * cell, left + (j + 1) * cell - 1, top + (i + 1) * cell - 1)
            draw.rectangle(box, fill=colour, outline=(220, 220, 220))
            if value:
                ink = "white" if shade > 0.6 else "black"
                draw.text((box[0] + cell / 2, box[1] + cell / 2), str(value), fill=ink, font=font, anchor="mm")
    return image


class ValidationFigures(Callback):
    """Logs an image grid with the mistakes marked, the most confident mistakes and a confusion matrix.

    Args:
        num_images: images in each grid (the first validation images, and the most confident mistakes).
        columns: images per row of a grid.
        every_n_epochs: draw after every n-th epoch only (the n-th, 2n-th, ...), where epochs are so
            short (e.g. on a GPU) that a few tenths of a second per epoch matter.
    """

    def __init__(self, num_images: int = 32, columns: int = 8, every_n_epochs: int = 1) -> None:
        if min(num_images, columns, every_n_epochs) < 1:
            raise ValueError(f"num_images, columns and every_n_epochs must be >= 1; got {num_images}, {columns}, "
                             f"{every_n_epochs}")
        self.num_images = num_images
        self.columns = columns
        self.every_n_epochs = every_n_epochs
        self.seconds = 0.0  # time spent collecting and drawing, summed over the run
        self.last_confusion: torch.Tensor | None = None  # the last epoch's matrix, for tests and notebooks
        self._confusion: MulticlassConfusionMatrix | None = None
        self._first: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._mistakes: tuple[torch.Tensor, ...] | None = None  # images, confidences, preds, targets

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        num_classes = int(getattr(pl_module.hparams, "num_classes", 10))
        self._confusion = MulticlassConfusionMatrix(num_classes=num_classes, validate_args=False)
        if stage in ("fit", "validate") and self._tensorboard(trainer) is None:
            rank_zero_warn("ValidationFigures logs to TensorBoard, but the trainer has no TensorBoardLogger: "
                           "no figures will be logged.")

    @staticmethod
    def _tensorboard(trainer: pl.Trainer) -> TensorBoardLogger | None:
        return next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)

    def _active(self, trainer: pl.Trainer) -> bool:
        """A real validation (not the sanity check) of an epoch that gets figures."""
        return (not trainer.sanity_checking and self._confusion is not None
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._confusion is not None:
            self._confusion.to(pl_module.device)
            self._confusion.reset()
        self._first, self._mistakes = None, None

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self._active(trainer):
            return
        start = time.perf_counter()
        x, y = batch[0], batch[1]
        preds = outputs["preds"] if isinstance(outputs, dict) and "preds" in outputs else pl_module(x).argmax(dim=1)
        self._confusion.update(preds, y)
        if self._first is None:
            k = self.num_images
            self._first = (x[:k].detach().cpu(), preds[:k].cpu(), y[:k].cpu())
        wrong = preds != y
        if trainer.is_global_zero and bool(wrong.any()):
            self._keep_confident_mistakes(pl_module, x[wrong], preds[wrong], y[wrong])
        self.seconds += time.perf_counter() - start

    def _keep_confident_mistakes(self, pl_module: pl.LightningModule, x: torch.Tensor, preds: torch.Tensor,
                                 targets: torch.Tensor) -> None:
        """Merge this batch's mistakes into the `num_images` most confident ones seen this epoch."""
        with torch.no_grad():
            confidence = pl_module(x).softmax(dim=1).gather(1, preds[:, None])[:, 0].float()
        new = (x.detach().cpu(), confidence.cpu(), preds.cpu(), targets.cpu())
        merged = new if self._mistakes is None else tuple(torch.cat(pair) for pair in zip(self._mistakes, new, strict=True))
        order = merged[1].argsort(descending=True)[: self.num_images]
        self._mistakes = tuple(t[order] for t in merged)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._active(trainer) or self._first is None:
            return
        start = time.perf_counter()
        matrix = self._confusion.compute()  # on every rank: under DDP it is a collective
        self.last_confusion = matrix.cpu()
        logger = self._tensorboard(trainer)
        if trainer.is_global_zero and logger is not None:
            classes = self._class_names(trainer, matrix.shape[0])
            step = trainer.global_step
            images, preds, targets = self._first
            figures = {
                "val/predictions": image_grid(images, preds.tolist(), targets.tolist(), classes, columns=self.columns),
                "val/confusion_matrix": confusion_figure(matrix, classes),
            }
            if self._mistakes is not None:
                images, confidence, preds, targets = self._mistakes
                figures["val/confident_mistakes"] = image_grid(
                    images, preds.tolist(), targets.tolist(), classes, probs=confidence.tolist(), columns=self.columns
                )
            for tag, figure in figures.items():
                logger.experiment.add_image(tag, render(figure), step, dataformats="HWC")
        self._first, self._mistakes = None, None
        self.seconds += time.perf_counter() - start

    @staticmethod
    def _class_names(trainer: pl.Trainer, num_classes: int) -> list[str]:
        classes = getattr(trainer.datamodule, "classes", None) if trainer.datamodule is not None else None
        if classes is not None and len(classes) == num_classes:
            return [str(c) for c in classes]
        return [str(i) for i in range(num_classes)]
