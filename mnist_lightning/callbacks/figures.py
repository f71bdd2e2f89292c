"""TensorBoard figures: what the net gets wrong at each validation epoch end, and what it is fed.

Add `ValidationFigures` to the trainer's callbacks (the default config, mnist_lightning/default.yaml, does) and
open the IMAGES tab of `tensorboard --logdir lightning_logs`:

* ``val/predictions``: the first validation images (the same ones every epoch), each labelled
  ``predicted/true``; the mistakes are framed in red.
* ``val/confident_mistakes``: the wrong predictions the net was most sure of, over the whole
  validation set, labelled ``predicted/true`` and the predicted probability.
* ``val/confusion_matrix``: torchmetrics' `MulticlassConfusionMatrix` over the whole validation set
  (rows: true class, columns: predicted class).

A `validate` of a checkpoint logs the same three under ``validate/`` at the checkpoint's step.

Cheap by construction: the confusion matrix is updated from the predictions `validation_step`
returns; probabilities are recomputed only for the mistakes (a few per batch); the figures are drawn
once per epoch (or every `every_n_epochs`), on rank zero, never during the sanity check. All three
are drawn with PIL (milliseconds; headless, no window): matplotlib through torchmetrics' `plot()`
took ~0.35 s per epoch on a 2-core CPU, a fifth of a whole MNIST epoch. `seconds` holds the time
spent, so a benchmark can report it against the epoch time.

`TrainingImages` logs ``train/images`` once per run: the first training batch as the net gets it
(augmented, when `data.augment` is set), so a user sees what the transform does.

Under DDP the confusion matrix covers every rank's share of the validation set; the two image grids
show rank zero's share."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics.classification import MulticlassConfusionMatrix

from mnist_lightning.callbacks.drawing import confusion_figure, image_grid, render, sample_grid
from mnist_lightning.callbacks.evaluation_step import CheckpointStep


class ValidationFigures(CheckpointStep):
    """Logs an image grid with the mistakes marked, the most confident mistakes and a confusion matrix.

    Args:
        num_images: images in each grid (the first validation images, and the most confident mistakes).
        columns: images per row of a grid.
        every_n_epochs: draw after every n-th epoch only (the n-th, 2n-th, ...), where epochs are so
            short (e.g. on a GPU) that a few tenths of a second per epoch matter.
    """

    def __init__(self, num_images: int = 32, columns: int = 8, every_n_epochs: int = 1) -> None:
        super().__init__()
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
        old = self._mistakes
        merged = new if old is None else tuple(torch.cat(pair) for pair in zip(old, new, strict=True))
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
            step, prefix = self._where(trainer)
            images, preds, targets = self._first
            figures = {
                "predictions": image_grid(images, preds.tolist(), targets.tolist(), classes, columns=self.columns),
                "confusion_matrix": confusion_figure(matrix, classes),
            }
            if self._mistakes is not None:
                images, confidence, preds, targets = self._mistakes
                figures["confident_mistakes"] = image_grid(
                    images, preds.tolist(), targets.tolist(), classes, probs=confidence.tolist(), columns=self.columns
                )
            for tag, figure in figures.items():
                logger.experiment.add_image(f"{prefix}/{tag}", render(figure), step, dataformats="HWC")
        self._first, self._mistakes = None, None
        self.seconds += time.perf_counter() - start

    def _where(self, trainer: pl.Trainer) -> tuple[int, str]:
        """The step and tag prefix of this validation's figures. A `validate` of a checkpoint logs at the
        checkpoint's step under `validate/`: at step 0 under `val/`, TensorBoard would drop the run's own
        figures (it keeps, per tag, no point at or after a later event's step)."""
        if trainer.state.fn == "fit":
            return trainer.global_step, "val"
        return self.evaluated_step(trainer), "validate"

    @staticmethod
    def _class_names(trainer: pl.Trainer, num_classes: int) -> list[str]:
        classes = getattr(trainer.datamodule, "classes", None) if trainer.datamodule is not None else None
        if classes is not None and len(classes) == num_classes:
            return [str(c) for c in classes]
        return [str(i) for i in range(num_classes)]


class TrainingImages(Callback):
    """Logs ``train/images``: a grid of training images exactly as the net is fed them (augmented, when the
    data augments), labelled with their class, once per run from its first training batch.

        python -m mnist_lightning fit --data.augment mnist_lightning.data.augment.AffineJitter \
            --trainer.callbacks+=mnist_lightning.callbacks.figures.TrainingImages

    (`configs/augment.yaml` adds it.) A resumed run does not log it again. With `FastMNISTClassifier`
    the batch is the last of the first `training_step` call, the one Lightning hands to the hooks.

    Args:
        num_images: images in the grid (at most a batch).
        columns: images per row.
    """

    def __init__(self, num_images: int = 32, columns: int = 8) -> None:
        if min(num_images, columns) < 1:
            raise ValueError(f"num_images and columns must be >= 1; got {num_images}, {columns}")
        self.num_images, self.columns = num_images, columns
        self.seconds = 0.0
        self._done = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._done = trainer.ckpt_path is not None  # a resumed run logged it when it started
        if ValidationFigures._tensorboard(trainer) is None:
            rank_zero_warn("TrainingImages logs to TensorBoard, but the trainer has no TensorBoardLogger: "
                           "no training images will be logged.")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._done or not isinstance(batch, list | tuple) or not isinstance(batch[0], torch.Tensor):
            return
        self._done = True
        logger = ValidationFigures._tensorboard(trainer)
        if not trainer.is_global_zero or logger is None:
            return
        start = time.perf_counter()
        images, labels = batch[0][: self.num_images], batch[1][: self.num_images]
        classes = ValidationFigures._class_names(trainer, int(getattr(pl_module.hparams, "num_classes", 10)))
        augment = getattr(trainer.datamodule, "augment", None) if trainer.datamodule is not None else None
        what = f"augmented by {type(augment).__name__}" if augment is not None else "not augmented"
        legend = f"training images as the net is fed them ({what}), with their class"
        figure = sample_grid(images, labels.tolist(), classes, legend, columns=self.columns)
        step = max(trainer.global_step - 1, 0)  # the optimizer step this batch trained (the hook comes after it)
        logger.experiment.add_image("train/images", render(figure), step, dataformats="HWC")
        self.seconds += time.perf_counter() - start
