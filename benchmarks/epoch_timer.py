"""A callback for benchmarks: wall and CPU time of each training epoch, everything included, to a JSON file.

    python -m mnist_lightning fit ... --trainer.callbacks+=epoch_timer.EpochTimer --trainer.callbacks.path t.json
(with benchmarks/ on PYTHONPATH).

An epoch runs from one `on_train_epoch_start` to the next (the last one to `on_train_end`), so it
holds the epoch's validation, figures, logging and both checkpoints: Lightning calls `Checkpoint`
callbacks (ResumeCheckpoint's `last.ckpt`) after every other epoch-end hook, this one included.
At interpreter exit it writes `<path>.exit` (unless `exit_marker=False`): its presence shows that
the process ended normally (atexit handlers ran), not through `os._exit`.

CPU time is the process's (all its threads): with one torch thread it is what the wall time
would be on an idle machine, so it is the steadier number on a shared one.
"""

import atexit
import json
import time
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback


class EpochTimer(Callback):
    def __init__(self, path: str, exit_marker: bool = True) -> None:
        self.path = path
        self.starts: list[tuple[float, float]] = []  # (wall, CPU)
        if exit_marker:
            atexit.register(Path(f"{path}.exit").write_text, "normal interpreter exit\n")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append((time.perf_counter(), time.process_time()))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.starts.append((time.perf_counter(), time.process_time()))

    def _spans(self, i: int) -> list[float]:
        return [end[i] - start[i] for start, end in zip(self.starts, self.starts[1:], strict=False)]

    @property
    def epoch_times(self) -> list[float]:
        return self._spans(0)

    @property
    def epoch_cpu_times(self) -> list[float]:
        return self._spans(1)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        val_acc = trainer.callback_metrics.get("val/acc")
        # The TensorBoard figures' own cost (collected and drawn inside the epochs timed above).
        figures = next((c.seconds for c in trainer.callbacks if type(c).__name__ == "ValidationFigures"), None)
        with open(self.path, "w") as f:
            json.dump({"epoch_times": self.epoch_times, "epoch_cpu_times": self.epoch_cpu_times,
                       "val_acc": float(val_acc) if val_acc is not None else None,
                       "figures_seconds": figures}, f)
