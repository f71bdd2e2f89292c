"""An opt-in speed path: several training batches per `training_step` call, same updates.

    python -m mnist_lightning fit --config configs/fast.yaml          # stackable on any other config

Lightning's per-step machinery (the hooks of every callback, the logger and progress bookkeeping)
runs once per `training_step` call; for a net as small as the tutorial's that is comparable to the
step itself (docs/speed.md has the measurements). `FastMNISTClassifier` draws `steps_per_call`
batches per call through Lightning's `dataloader_iter` flavour and makes one optimizer step per
batch with Lightning's manual-optimisation API (`manual_backward`, `optimizer.step()`, so precision
plugins and DDP still apply). tests/test_fast.py shows it ends with the same weights, bit for bit,
as `MNISTClassifier` (same seed, dropout, a per-batch schedule, also under 2-process DDP).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytorch_lightning as pl
import torch
from jsonargparse.typing import PositiveInt

from mnist_lightning.errors import UserInputError, quiet_warnings
from mnist_lightning.models.classifier import MNISTClassifier

IDIOMATIC = "mnist_lightning.models.MNISTClassifier (leave out configs/fast.yaml)"


class FastMNISTClassifier(MNISTClassifier):
    """`MNISTClassifier` that trains `steps_per_call` batches per `training_step` call.

    What it trades away, all because Lightning sees one step per call:
    * Lightning's automatic optimisation: `gradient_clip_val` and `accumulate_grad_batches` are
      refused (use the idiomatic class for them), as are schedulers stepped per epoch or on a
      monitored metric (`RunSchedule`s such as `OneCycle`, and torch schedulers with
      `lr_scheduler_interval: step`, work).
    * Per-batch callback hooks (`on_train_batch_end`, `ModelCheckpoint(every_n_train_steps)`,
      `LearningRateMonitor(logging_interval="step")`, EMA-style callbacks) fire once per call, and a
      SIGINT/SIGTERM checkpoint comes between calls.
    * Validation inside an epoch (`val_check_interval` below an epoch) is refused: Lightning
      counts calls there, not batches.
    * Batch-transfer hooks (`on_before_batch_transfer`, ...) are bypassed: batches are moved with
      the strategy's `batch_to_device`.
    * The logging x-axis stays the optimizer step only because `step` is logged by hand.

    Args:
        steps_per_call: batches (optimizer steps) per call of `training_step`.
        **kwargs: those of `MNISTClassifier`.
    """

    def __init__(self, steps_per_call: PositiveInt = 50, **kwargs: Any):
        super().__init__(**kwargs)
        self.automatic_optimization = False  # training_step steps the optimizer itself

    # --------------------------------------------------------------------------- refused flags
    def check_trainer_flags(self, trainer: pl.Trainer) -> None:
        """Refuse what this class cannot honour, naming the class that can.

        The CLI calls it before fit: Lightning's own check of manual optimisation runs before any
        hook of the module, and its message does not say which class to use instead.
        """
        if trainer.gradient_clip_val:
            raise UserInputError(
                f"trainer.gradient_clip_val needs Lightning's automatic optimisation: use {IDIOMATIC}.")
        if trainer.accumulate_grad_batches != 1:
            raise UserInputError(
                f"trainer.accumulate_grad_batches needs Lightning's automatic optimisation: use {IDIOMATIC}."
            )

    def on_train_start(self) -> None:
        super().on_train_start()
        trainer = self.trainer
        check_every = trainer.val_check_batch
        mid_epoch = isinstance(check_every, int) and (check_every < trainer.num_training_batches
                                                      or trainer.check_val_every_n_epoch is None)
        if self.hparams.steps_per_call > 1 and mid_epoch and trainer.limit_val_batches != 0:
            raise UserInputError(
                f"validation every {check_every} batches (trainer.val_check_interval) counts training_step calls "
                f"with FastMNISTClassifier: use {IDIOMATIC}, or --model.steps_per_call 1."
            )
        for config in trainer.lr_scheduler_configs:
            if config.interval != "step" or config.monitor is not None:
                raise UserInputError(f"schedulers stepped per epoch or on a metric need {IDIOMATIC}.")

    # --------------------------------------------------------------------------- training
    def training_step(self, dataloader_iter: Iterator[tuple[Any, int, int]]) -> dict[str, torch.Tensor] | None:
        """Up to `steps_per_call` optimizer steps, one per batch drawn from the training loader."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        every = self.trainer.log_every_n_steps
        losses, preds, targets = [], [], []
        for batch, _, _ in itertools.islice(dataloader_iter, self._steps_this_call()):
            x, y = self._on_device(batch)
            logits = self(x)
            loss = self.loss(logits, y, training=True)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            preds.append(logits.argmax(dim=1))
            targets.append(y)
            if every and self.global_step % every == 0:
                for logger in self.loggers:  # straight to the loggers: the x-axis is the optimizer step
                    logger.log_metrics({"train/loss_step": loss.item()}, step=self.global_step)
        if not losses:
            return None
        step_losses = torch.stack(losses)
        # Epoch means in the same metric objects as the idiomatic class, one update per call.
        self.train_metrics.update(step_losses, torch.cat(preds), torch.cat(targets))
        # A NaN or infinite loss at any of the steps makes the mean so (ResumeCheckpoint reads it).
        return {"loss": step_losses.mean()}

    def _steps_this_call(self) -> int:
        steps = self.hparams.steps_per_call
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, not at the next multiple of steps_per_call
            steps = min(steps, self.trainer.max_steps - self.global_step)
        return max(steps, 0)

    def _on_device(self, batch: Any) -> Any:
        # With `dataloader_iter` Lightning hands batches over as loaded; do what it does for plain batches.
        batch = self.trainer.precision_plugin.convert_input(batch)
        if batch[0].device != self.device:
            batch = self.trainer.strategy.batch_to_device(batch)
        return batch

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        self._log_x_axis()

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self._log_x_axis()

    def _log_x_axis(self) -> None:
        """Plot epoch-level values where the idiomatic class has them: at the epoch's last optimizer step.

        A logged `step` is what Lightning's logger connector uses as the x-axis; without it Lightning
        uses its count of training_step calls, `steps_per_call` times smaller. (It then adds `epoch`
        only when no `step` is logged, so that is logged here too.)
        """
        self.log("step", float(max(self.global_step - 1, 0)), batch_size=1)
        self.log("epoch", float(self.current_epoch), batch_size=1)


def quiet_dataloader_iter_warnings() -> AbstractContextManager[None]:
    """Lightning calls the `dataloader_iter` flavour experimental; FastMNISTClassifier's docstring says what it
    means here and tests/test_fast.py pins it, so its two warnings are silenced around its fit, not globally."""
    return quiet_warnings("You are using the `dataloader_iter` step flavor",
                          "Found `dataloader_iter` argument in the `training_step`")
