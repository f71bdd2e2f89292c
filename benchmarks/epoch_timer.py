"""A callback for benchmarks: wall time of each training epoch (validation included), to a JSON file.

    python -m mnist_lightning fit ... --trainer.callbacks+=epoch_timer.EpochTimer --trainer.callbacks.path t.json
(with benchmarks/ on PYTHONPATH).
"""

import json
import time

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class EpochTimer(Callback):
    def __init__(self, path: str) -> None:
        self.path = path
        self.epoch_times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so its cost is counted.
        self.epoch_times.append(time.perf_counter() - self._start)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val_acc = trainer.callback_metrics.get("val/acc")
        # The TensorBoard figures' own cost (collected and drawn inside the epochs timed above).
        figures = next((c.seconds for c in trainer.callbacks if type(c).__name__ == "ValidationFigures"), None)
        with open(self.path, "w") as f:
            json.dump({"epoch_times": self.epoch_times, "val_acc": float(val_acc) if val_acc is not None else None,
                       "figures_seconds": figures}, f)
