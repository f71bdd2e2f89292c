"""The two protocols that say which checkpoint is a run's model: the best by validation, or the last of a refit.

    python -m mnist_lightning fit --config configs/mlp_best.yaml                      # best-val
    python -m mnist_lightning fit --config configs/mlp_best.yaml --data.val_size 0    # refit-last

* ``best-val``: 5,000 (``data.val_size``) training images are held out; the model is the epoch that
  scored best on them (the default config's `ModelCheckpoint` on ``val/acc``).
* ``refit-last``: once the settings are chosen on validation, ``--data.val_size 0`` trains on every
  training image, runs no validation, and the model is the run's ``last.ckpt`` (written by
  `mnist_lightning.callbacks.resume.ResumeCheckpoint` at every epoch end). Callbacks that watch a validation
  metric (`ModelCheckpoint`, `EarlyStopping`, ...) would find nothing to watch (Lightning's
  `EarlyStopping` raises), so the CLI leaves them out of the Trainer and says so in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

from mnist_lightning.errors import UserInputError

BEST_VAL = "best-val"
REFIT_LAST = "refit-last"


def no_validation_reason(datamodule: Any, limit_val_batches: Any = None) -> str | None:
    """Why a fit runs no validation (the setting that says so), or None when it validates."""
    if datamodule is not None and getattr(datamodule, "has_validation", True) is False:
        return "data.val_size 0"
    if limit_val_batches is not None and not isinstance(limit_val_batches, bool) and limit_val_batches == 0:
        return "trainer.limit_val_batches 0"
    return None


def protocol_of(datamodule: Any, limit_val_batches: Any = None) -> str:
    """`best-val` or `refit-last`, for a table row that says how its model was chosen."""
    return REFIT_LAST if no_validation_reason(datamodule, limit_val_batches) else BEST_VAL


def watches_validation(callback: Any) -> bool:
    """A callback with a `monitor` on a validation metric (its name starts with ``val``, as every metric the
    validation loop logs does here): ModelCheckpoint, EarlyStopping, a user's own."""
    monitor = getattr(callback, "monitor", None)
    return isinstance(monitor, str) and monitor.startswith("val")


def without_validation_watchers(callbacks: Sequence[Any], reason: str) -> tuple[list[Any], str | None]:
    """The callbacks that still have work without validation, and the line that says which stepped aside."""
    kept = [*(c for c in callbacks if not watches_validation(c)), NoMetricSchedules(reason)]
    aside = [c for c in callbacks if watches_validation(c)]
    if not aside:
        return kept, None
    names = ", ".join(f"{type(c).__name__}(monitor={c.monitor!r})" for c in aside)
    return kept, (f"{reason}: no validation runs, so {names} step{'s' if len(aside) == 1 else ''} aside; "
                  "the model is the last epoch's checkpoint, last.ckpt.")


class NoMetricSchedules(pl.Callback):
    """Refuses, before the first step, a schedule that steps on a validation metric (`ReduceLROnPlateau`) in a
    fit that runs no validation: Lightning would only say so at the end of the first epoch."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for config in trainer.lr_scheduler_configs:
            if config.monitor is not None:
                raise UserInputError(
                    f"model.lr_scheduler {type(config.scheduler).__name__} steps on {config.monitor}, but "
                    f"{self.reason} runs no validation: choose a schedule that watches no metric (e.g. "
                    "mnist_lightning.models.OneCycle), or hold out validation images.")
