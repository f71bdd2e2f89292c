"""What the idiomatic class writes to TensorBoard is what it wrote before its per-step work was cut.

`MNISTClassifier` logs `train/loss_step` only on the steps whose value reaches the loggers, and
keeps its training epoch means in one `TrainingMeans` object (mnist_lightning/models/metrics.py). The
reference below is the class as it was: `self.log` of the step loss in every `training_step`, and
torchmetrics' `MeanMetric` + `MulticlassAccuracy` updated every step. Both are trained with the same
seed under the Trainer flags that change which steps are written, and every scalar series of their
event files (steps and values), and their final weights, must be the same.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning import MNISTClassifier, MNISTDataModule


class LoggedEveryStep(MNISTClassifier):
    """The idiomatic class before its step logging and training metrics were made cheaper."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.old_train_loss = MeanMetric()
        self.old_train_acc = MulticlassAccuracy(num_classes=self.hparams.num_classes, average="micro",
                                                validate_args=False)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, preds, y = self.model_step(batch, training=True)
        self.old_train_loss.update(loss)
        self.old_train_acc.update(preds, y)
        self.log("train/loss_step", loss.detach().mean(), on_step=True, on_epoch=False)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        pass

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.old_train_loss.compute(), batch_size=1)
        self.log("train/acc", self.old_train_acc.compute(), prog_bar=True, batch_size=1)
        self.old_train_loss.reset()
        self.old_train_acc.reset()


def scalar_series(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of a run, as TensorBoard's own loader reads it: (step, value) in order."""
    events = EventAccumulator(str(log_dir), size_guidance={SCALARS: 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def fit(model_class: type[MNISTClassifier], data_dir: Path, root: Path, flags: dict[str, Any]) -> tuple[dict, dict]:
    pl.seed_everything(7)
    model = model_class()
    logger = TensorBoardLogger(root, name=model_class.__name__, version=0)
    trainer = pl.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, **{"max_epochs": 2, "log_every_n_steps": 2, **flags})
    # 500 training images, batch 64: 8 batches an epoch, the last one short.
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=100))
    return scalar_series(Path(logger.log_dir)), {k: v.clone() for k, v in model.net.state_dict().items()}


FLAGS = {
    "defaults": {},
    "every step": {"log_every_n_steps": 1},
    "a step count that is not a divisor of the epoch": {"log_every_n_steps": 3, "max_epochs": 3},
    "accumulated gradients": {"accumulate_grad_batches": 3},
    "max_steps mid-epoch": {"max_steps": 11, "max_epochs": -1},
    "validation inside the epoch": {"val_check_interval": 3},
}


@pytest.mark.parametrize("flags", FLAGS.values(), ids=FLAGS.keys())
def test_every_series_and_the_weights_are_those_of_logging_every_step(flags, shared_tiny_data, tmp_path):
    before, weights_before = fit(LoggedEveryStep, shared_tiny_data, tmp_path, flags)
    after, weights_after = fit(MNISTClassifier, shared_tiny_data, tmp_path, flags)
    assert before["train/loss_step"], "the reference wrote no step losses: the comparison would be empty"
    assert after == before
    for key, value in weights_before.items():
        assert torch.equal(weights_after[key], value), key


def test_values_logged_inside_an_accumulation_window_are_the_windows_last_batch(shared_tiny_data, tmp_path):
    """With accumulation the written step loss is the loss of the batch that stepped, not a mean or an
    earlier batch of the window (what `outputs["loss"]`, divided by the window, would give)."""
    seen: list[float] = []

    class Recording(MNISTClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
            out = super().training_step(batch, batch_idx)
            seen.append(float(out["step_loss"]))
            return out

    series, _ = fit(Recording, shared_tiny_data, tmp_path, {"accumulate_grad_batches": 2, "log_every_n_steps": 1,
                                                           "max_epochs": 1})
    # 8 batches: optimizer steps after batches 1, 3, 5, 7 (0-based), written at steps 0..3.
    assert series["train/loss_step"] == [(step, pytest.approx(seen[2 * step + 1], abs=0)) for step in range(4)]
