"""The training epoch's mean loss and accuracy as one torchmetrics object, updated once per step.

Validation and test keep torchmetrics' own `MeanMetric` and `MulticlassAccuracy` (a few batches per
epoch). Training updates its metrics on every step, where the two of them cost about 0.3 ms of CPU
per step together (their argument handling, `nan` checks and four stat-score counts), as much as a
third of a whole step of the tutorial's net; one `Metric` with four counters costs a sixth of that
(docs/speed.md) and computes the same values, bit for bit (tests/test_metrics.py).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torchmetrics import Metric


class TrainingMeans(Metric):
    """Mean batch loss and micro accuracy of the batches seen since the last reset.

    `update(losses, preds, targets)` takes one batch's loss (a scalar) or several batches' losses
    (a vector, one per batch), with the predicted classes and the targets of those batches.
    `compute()` returns `(mean loss, accuracy)`: the mean over batches of the batch losses, as a
    `MeanMetric` of them gives, and correct / seen, as `MulticlassAccuracy(average="micro")` gives.
    The counters sum over processes under DDP, as those metrics' states do.
    """

    full_state_update = False  # update() never reads the accumulated state: torchmetrics may skip a copy

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # float32 sums, as MeanMetric keeps them (so the same additions in the same order); exact counts.
        self.add_state("loss_sum", torch.tensor(0.0, dtype=torch.get_default_dtype()), dist_reduce_fx="sum")
        self.add_state("batches", torch.tensor(0.0, dtype=torch.get_default_dtype()), dist_reduce_fx="sum")
        self.add_state("correct", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seen", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, losses: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += losses.detach().sum().to(self.loss_sum.dtype)
        self.batches += losses.numel()
        self.correct += (preds == targets).sum()
        self.seen += targets.numel()

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        loss = self.loss_sum / self.batches
        seen = self.seen.float()
        accuracy = torch.where(seen > 0, self.correct.float() / seen, torch.zeros_like(seen))  # as torchmetrics' 0/0
        return loss, accuracy


def values_reach_loggers(trainer: pl.Trainer) -> bool:
    """Whether values logged now, at the end of a training batch, are written to the loggers.

    Lightning's rule (`log_every_n_steps`, public Trainer flags only): after the optimizer step that makes
    `global_step` a multiple of `log_every_n_steps`, when the run is stopping, and on every step of a
    `fast_dev_run`. Inside an accumulation window nothing is written, and a value logged there is
    overwritten by the window's last batch before it could be.
    """
    if not trainer.loggers:
        return False
    if trainer.fast_dev_run:
        return True
    every = trainer.log_every_n_steps
    return every > 0 and (trainer.global_step % every == 0 or trainer.should_stop)
