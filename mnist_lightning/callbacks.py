"""Callbacks that keep a run's work safe: a checkpoint on Ctrl+C / SIGTERM, a stop on a NaN loss."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint


def last_checkpoint_path(trainer: pl.Trainer) -> Path | None:
    callback = trainer.checkpoint_callback
    if not isinstance(callback, ModelCheckpoint) or callback.dirpath is None:
        return None
    return Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"


class TrainingInterrupted(SystemExit):
    """Raised after the interrupt checkpoint is written; exits with 128 + the signal number."""


class CheckpointOnInterrupt(Callback):
    """On SIGINT or SIGTERM, finish the current batch, save `last.ckpt`, say how to resume, exit non-zero.

    The checkpoint is taken between batches, so the weights, the optimizer and the loader's
    position in the epoch agree; resuming continues from the next batch and ends bit-identical to
    an uninterrupted run. (Lightning alone turns SIGTERM into an exit without a checkpoint, and
    Ctrl+C into an interrupt that may land in the middle of an optimizer step.)
    """

    def __init__(self) -> None:
        self._received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl+C: stop now
        self._received = signum

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Installed here because Lightning registers its own SIGTERM handler after on_fit_start.
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread (e.g. some notebook or spawn setups)
                return

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self._received is None:
            return
        # Every rank must take part in the save under DDP; rank 0 decides for all.
        received = trainer.strategy.broadcast(self._received)
        name = signal.Signals(received).name
        path = last_checkpoint_path(trainer)
        epoch, batch = trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if path is None:
            message = f"{name} received at epoch {epoch}, batch {batch}: no ModelCheckpoint, nothing saved."
        else:
            trainer.save_checkpoint(path)
            config = Path(trainer.log_dir or ".") / "config.yaml"
            message = (
                f"{name} received at epoch {epoch}, batch {batch}: saved {path}. Resume with: "
                f"python -m mnist_lightning fit --config {config} --ckpt_path last"
            )
        if trainer.is_global_zero:
            print(message, file=sys.stderr, flush=True)
        raise TrainingInterrupted(128 + received)


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(Callback):
    """Stop with a clear message as soon as the training loss is NaN or infinite.

    Raising before the epoch's validation means ModelCheckpoint never saves the broken weights:
    the last good checkpoint stays. The check accumulates on the device and reads the flag back
    only every `check_every` steps and before validation, so a GPU is not synchronised per step.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = check_every
        self._finite: torch.Tensor | None = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        finite = torch.isfinite(loss.detach()).all()
        self._finite = finite if self._finite is None else self._finite & finite
        if (batch_idx + 1) % self.check_every == 0:
            self._check(trainer, loss)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._check(trainer, None)

    def _check(self, trainer: pl.Trainer, loss: torch.Tensor | None) -> None:
        if self._finite is None or bool(self._finite):
            return
        last = last_checkpoint_path(trainer)
        kept = f"The last good checkpoint is kept: {last}." if last is not None and last.exists() else "No checkpoint was saved yet."
        value = f" ({float(loss)})" if loss is not None else ""
        raise TrainingDiverged(
            f"the training loss became NaN or infinite{value} at epoch {trainer.current_epoch}, step "
            f"{trainer.global_step}: training stopped. {kept} Lower --model.lr or check the input data."
        )
