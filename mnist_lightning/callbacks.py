"""`ResumeCheckpoint`: everything a run needs to survive a crash, an interrupt or a diverging loss.

One callback rather than three, because Lightning calls every callback for every hook of every
step, and on this small net that cost is measurable (README, "Speed").
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Checkpoint, ModelCheckpoint

LAST_CHECKPOINT = "last.ckpt"


class TrainingInterrupted(SystemExit):
    """Raised after the interrupt checkpoint is written; exits with 128 + the signal number."""


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


def checkpoint_dir(trainer: pl.Trainer) -> Path:
    """Where the run's checkpoints go: the first ModelCheckpoint's folder, else <log_dir>/checkpoints."""
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
            return Path(callback.dirpath)
    return Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"


class ResumeCheckpoint(Checkpoint):
    """Writes `last.ckpt` at every epoch end and on SIGINT/SIGTERM, and stops on a non-finite loss.

    * Epoch end: Lightning's `ModelCheckpoint(save_last=True)` only writes `last.ckpt` when the
      monitored metric improved, so a plateauing run would resume from an old epoch. Saved after
      the module's `on_train_epoch_end` (this is a `Checkpoint`, which Lightning calls last), so
      the epoch's metrics are already logged and reset.
    * SIGINT/SIGTERM: the current call of training_step finishes (its `steps_per_call` batches),
      then the checkpoint is written between batches, so weights, optimizer, RNG and the loader's
      position agree (in the epoch's last call, the epoch finishes first: validation, the
      epoch-end checkpoint, its metrics logged); the process prints how to resume and exits with
      128 + the signal number. Resuming continues at the next batch and ends bit-identical to an uninterrupted run.
      (Lightning alone exits on SIGTERM without a checkpoint, and Ctrl+C may land in the middle
      of an optimizer step.)
    * A NaN or infinite loss raises `TrainingDiverged` before validation, so no checkpoint (this
      one or ModelCheckpoint's) ever holds the broken weights: the last good one stays.
    """

    def __init__(self) -> None:
        self._received: int | None = None
        self._previous_handlers: dict[int, Any] = {}
        self._all_finite: torch.Tensor | None = None
        self._batches_done = 0

    @staticmethod
    def path(trainer: pl.Trainer) -> Path:
        return checkpoint_dir(trainer) / LAST_CHECKPOINT

    def _saving_enabled(self, trainer: pl.Trainer) -> bool:
        return not trainer.fast_dev_run and not trainer.sanity_checking

    # --------------------------------------------------------------------------- signals
    def _handle(self, signum: int, frame: FrameType | None) -> None:
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
        # and the datasets) for the rest of the process. Only undo what is still ours.
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
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._batches_done = batch_idx + 1  # the index of the last batch the call trained on
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            # Accumulated on the device; read back (a sync) once per call on CPU is cheap, and on
            # a GPU only before validation and saves.
            finite = torch.isfinite(loss.detach())
            self._all_finite = finite if self._all_finite is None else self._all_finite & finite
            if loss.device.type == "cpu":
                self._check_finite(trainer)
        # In the epoch's last call the epoch is finished first (validation, the epoch-end save, its
        # metrics logged; on_train_epoch_start stops the next one): a checkpoint taken between the
        # last batch and the epoch's end would make Lightning, which counts training_step calls
        # there, resume the finished epoch as if it were half done.
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch and self._interrupt_requested(trainer):
            self._save_and_exit(trainer)

    def _save_and_exit(self, trainer: pl.Trainer) -> None:
        self._check_finite(trainer)
        trainer.save_checkpoint(self.path(trainer))
        self._exit(trainer, f"in epoch {trainer.current_epoch}: saved after {self._batches_done} of its batches")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A signal during the previous epoch's last call or its validation: that epoch has ended and
        # been saved (and its metrics logged); stop before this one starts.
        if self._interrupt_requested(trainer):
            self._exit(trainer, f"at the end of epoch {trainer.current_epoch - 1}: saved")

    def _exit(self, trainer: pl.Trainer, when: str) -> None:
        signum = self._received or signal.SIGTERM
        if trainer.is_global_zero:
            config = Path(trainer.log_dir or ".") / "config.yaml"
            print(
                f"{signal.Signals(signum).name} received {when} {self.path(trainer)}. "
                f"Resume with: python -m mnist_lightning fit --config {config} --ckpt_path last",
                file=sys.stderr,
                flush=True,
            )
        raise TrainingInterrupted(128 + signum)

    # --------------------------------------------------------------------------- epoch end
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_finite(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._check_finite(trainer)
        if self._saving_enabled(trainer):
            trainer.save_checkpoint(self.path(trainer))

    def _check_finite(self, trainer: pl.Trainer) -> None:
        if self._all_finite is None or bool(self._all_finite):
            return
        last = self.path(trainer)
        kept = f"The last good checkpoint is kept: {last}." if last.exists() else "No checkpoint was saved yet."
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {trainer.current_epoch}, step {trainer.global_step}: "
            f"training stopped. {kept} Lower --model.lr or check the input data."
        )
