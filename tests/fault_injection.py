"""Callbacks that inject faults at a chosen batch, for the fault-injection tests.

They act only while FAULT_INJECTION=1 is set, because the run's saved config lists them too and the
resumed run (a process or an in-process `run_cli` without it) must not fault again.

Added from the command line like any callback (tests put this folder on PYTHONPATH):
    --trainer.callbacks+=fault_injection.SignalAt --trainer.callbacks.epoch 1 --trainer.callbacks.batch 3 ...
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


def _armed() -> bool:
    return os.environ.get("FAULT_INJECTION") == "1"


def _reached(done: bool, trainer: pl.Trainer, epoch: int, batch: int, batch_idx: int) -> bool:
    """The first call of on_train_batch_end at or past (epoch, batch): with `steps_per_call` > 1 the
    hook comes once per call of training_step, with the index of the call's last batch."""
    return _armed() and not done and trainer.current_epoch == epoch and batch_idx >= batch


class SignalAt(Callback):
    def __init__(self, epoch: int, batch: int, signal_name: str = "SIGTERM") -> None:
        self.epoch = epoch
        self.batch = batch
        self.signum = getattr(signal, signal_name)
        self._done = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if _reached(self._done, trainer, self.epoch, self.batch, batch_idx):
            self._done = True
            os.kill(os.getpid(), self.signum)


class NaNLossAt(Callback):
    """Poison the weights at a chosen batch, so the next loss is NaN."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch
        self._done = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                           batch_idx: int) -> None:
        if _reached(self._done, trainer, self.epoch, self.batch, batch_idx):
            self._done = True
            for p in pl_module.parameters():
                p.data.fill_(float("nan"))
