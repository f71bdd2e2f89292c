"""Callbacks that inject faults at a chosen batch, for the fault-injection tests.

They act only while FAULT_INJECTION=1 is set, because the run's saved config lists them too and the
resumed process (started without it) must not fault again.

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


class SignalAt(Callback):
    def __init__(self, epoch: int, batch: int, signal_name: str = "SIGTERM") -> None:
        self.epoch = epoch
        self.batch = batch
        self.signum = getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if _armed() and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


class NaNLossAt(Callback):
    """Poison the weights at a chosen batch, so the next loss is NaN."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch = epoch
        self.batch = batch

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx: int) -> None:
        if _armed() and trainer.current_epoch == self.epoch and batch_idx == self.batch:
            for p in pl_module.parameters():
                p.data.fill_(float("nan"))
