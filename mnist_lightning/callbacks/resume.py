"""The exact-resume callback: `last.ckpt` at every epoch end and on SIGINT/SIGTERM, a stop on a non-finite loss."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint

from mnist_lightning.checkpoints.files import LAST_CHECKPOINT
from mnist_lightning.commands import mnist_command
from mnist_lightning.errors import raised_by


def unlogged_monitors(trainer: pl.Trainer) -> list[str]:
    """The metrics that EarlyStopping callbacks monitor but the run has not logged (once it has validated)."""
    if not trainer.callback_metrics:
        return []
    return [c.monitor for c in trainer.early_stopping_callbacks if c.monitor not in trainer.callback_metrics]


class TrainingInterrupted(SystemExit):
    """Raised after the interrupt checkpoint is written; exits with 128 + the signal number."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def best_checkpoint(trainer: pl.Trainer) -> ModelCheckpoint | None:
    """The run's ModelCheckpoint that has saved a best model (its `best_model_path` and score), or None."""
    return next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.best_model_path),
                None)


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the first ModelCheckpoint's folder, else <log_dir>/checkpoints."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class ResumeCheckpoint(Checkpoint):
    """Writes `last.ckpt` at every epoch end and on SIGINT/SIGTERM, and stops on a non-finite loss.

    Project code only for what Lightning's callbacks leave out (tests/test_resume.py shows each):
    * Epoch end: Lightning's `ModelCheckpoint(save_last=True)` writes `last.ckpt` only when it also
      saved a top-k checkpoint, i.e. when the monitored metric improved, so a plateauing run would
      resume from an old epoch. This writes it after every epoch (after the module's
      `on_train_epoch_end`: Lightning calls `Checkpoint` callbacks last).
    * SIGINT/SIGTERM: Lightning exits on SIGTERM without a checkpoint, and Ctrl+C (or
      `OnExceptionCheckpoint`) may land in the middle of an optimizer step. Here the current
      `training_step` finishes, then the checkpoint is written between batches, so weights,
      optimizer, RNG and the loader's position agree (after the epoch's last batch the epoch finishes
      first: validation, the epoch-end checkpoint); the process prints how to resume and exits with
      128 + the signal number. Resuming ends bit-identical to an uninterrupted run.
    * A NaN or infinite loss raises `TrainingDiverged` before validation, so no checkpoint (this
      one or ModelCheckpoint's) ever holds the broken weights: the last good one stays.
    """

    def __init__(self, resume_hint: bool = True) -> None:
        self.resume_hint = resume_hint  # print the "Resume with:" line on a signal
        self._received: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._all_finite: torch.Tensor | None = None
        self._batches_done = 0
        self._stopping = False

    @staticmethod
    def path(trainer: pl.Trainer) -> Path:
        return checkpoint_dir(trainer) / LAST_CHECKPOINT

    def _saving_enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.fast_dev_run and not trainer.sanity_checking

    # --------------------------------------------------------------------------- signals
    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._stopping:  # saved and on the way out: a further Ctrl+C would only interrupt the exit
            return
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now, without a checkpoint
        self._received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here because Lightning registers its own SIGTERM handler after on_fit_start.
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: keep Lightning's behaviour
                return

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Lightning's own teardown (which runs before this hook) has already put back the handlers
        # from before its fit, replacing ours. Restoring what we saw in on_train_start then would
        # reinstall Lightning's SIGTERM handler, which holds the Trainer (and through it the model
        # and the datasets) for the rest of the process. Only undo what is still ours, and nothing
        # once an interrupt is being handled: the process is ending, and ours ignores further signals.
        if self._stopping:
            return
        for signum, handler in self._previous_handlers.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, handler)
        self._previous_handlers.clear()

    def _interrupt_requested(self, trainer: pl.Trainer) -> bool:
        if trainer.world_size == 1:
            return self._received is not None
        # Every rank must join the save, whichever received the signal.
        return trainer.strategy.reduce_boolean_decision(self._received is not None, all=False)

    # --------------------------------------------------------------------------- per batch
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._batches_done = batch_idx + 1  # (FastMNISTClassifier: the index of the last batch the call trained on)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Accumulated on the device; read back (a sync) once per call on CPU is cheap, and on
            # a GPU only before validation and saves.
            finite = torch.isfinite(loss.detach())
            self._all_finite = finite if self._all_finite is None else self._all_finite & finite
            if loss.device.type == "cpu":
                self._check_finite(trainer)
        # After the epoch's last batch the epoch is finished first (validation, the epoch-end save;
        # on_train_epoch_start stops the next one): a checkpoint taken between the last batch and
        # the epoch's end would make Lightning resume the finished epoch as if it were half done.
        if self._batches_done < trainer.num_training_batches and self._interrupt_requested(trainer):
            self._save_and_stop(trainer)

    def _save_and_stop(self, trainer: pl.Trainer) -> None:
        self._check_finite(trainer)
        trainer.save_checkpoint(self.path(trainer), weights_only=False)  # a full checkpoint, to resume from
        self._stop(trainer, f"in epoch {trainer.current_epoch}: saved after {self._batches_done} of its batches")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal during the previous epoch's last call or its validation: that epoch has ended and
        # been saved (and its metrics logged); stop before this one starts.
        if self._interrupt_requested(trainer):
            self._stop(trainer, f"at the end of epoch {trainer.current_epoch - 1}: saved")

    def _stop(self, trainer: pl.Trainer, when: str) -> None:
        self._stopping = True
        signum = self._received or signal.SIGTERM
        if trainer.is_global_zero and self.resume_hint:
            config = Path(trainer.log_dir or ".") / "config.yaml"
            print(
                f"{signal.Signals(signum).name} received {when} {self.path(trainer)}. "
                f"Resume with: {mnist_command('fit', '--config', config, '--ckpt_path', 'last')}",
                file=sys.stderr,
                flush=True,
            )
        raise TrainingInterrupted(128 + signum)

    # --------------------------------------------------------------------------- epoch end
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_finite(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # EarlyStopping checks its monitor at the epoch end, before this callback's save (Lightning calls
        # Checkpoint callbacks last), and raises where it was never logged: save the finished epoch first,
        # so fixing the monitor loses nothing (the CLI says so in one line).
        if (self._saving_enabled(trainer) and unlogged_monitors(trainer)
                and raised_by(exception, "pytorch_lightning.callbacks.early_stopping")):
            trainer.save_checkpoint(self.path(trainer), weights_only=False)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_finite(trainer)
        if self._saving_enabled(trainer):
            trainer.save_checkpoint(self.path(trainer), weights_only=False)  # a full checkpoint, to resume from

    def _check_finite(self, trainer: pl.Trainer) -> None:
        if self._all_finite is None or bool(self._all_finite):
            return
        last = self.path(trainer)
        kept = f"The last good checkpoint is kept: {last}." if last.exists() else "No checkpoint was saved yet."
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {trainer.current_epoch}, step {trainer.global_step}: "
            f"training stopped. {kept} Lower --model.lr or check the input data."
        )
