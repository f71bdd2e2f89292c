"""TensorBoard's HPARAMS tab: one row per run, with what defines the experiment and its real final metrics."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from mnist_lightning.checkpoints.parts import describe, part_settings

PARTS = ("net", "optimizer", "lr_scheduler")


def experiment_hparams(trainer: pl.Trainer, module: pl.LightningModule) -> dict[str, Any]:
    """What defines this experiment: the model's parts with their class paths and init args, its other
    settings, the data settings a checkpoint fixes, the seed, epochs, precision and devices; nothing
    internal, booleans as words."""
    params: dict[str, Any] = {"model.class": type(module).__name__}
    params.update({f"model.{k}": v for k, v in part_settings(module.hparams).items()})
    for part, attribute in zip(PARTS, ("net", "optimizer_factory", "lr_scheduler_factory"), strict=True):
        if hasattr(module, attribute):  # passed in Python: named, not configurable
            params.setdefault(f"model.{part}", describe(getattr(module, attribute)))
    settings = getattr(trainer.datamodule, "fixed_settings", None)
    if callable(settings):
        params.update({f"data.{k}": v for k, v in settings().items()})
    params.update({"seed": os.environ.get("PL_GLOBAL_SEED", "none"), "trainer.max_epochs": trainer.max_epochs,
                   "trainer.precision": str(trainer.precision), "trainer.devices": trainer.world_size})
    return {k: ("true" if v else "false") if isinstance(v, bool) else v if isinstance(v, int | float | str) else str(v)
            for k, v in params.items()}


class HparamsRow(pl.Callback):
    """Logs the run's hyperparameters with `hp/val_acc_best` after `fit` and `hp/test_acc` after `test`, so the
    HPARAMS tab compares runs by real results (no `hp_metric = -1` placeholder). The module saves its
    hyperparameters with `logger=False`, so this row is the only one.

    Args:
        best_metric: the logged metric whose final value is the fit's result.
        test_metric: the logged metric whose value is the test's result.
    """

    def __init__(self, best_metric: str = "val/acc_best", test_metric: str = "test/acc") -> None:
        self.best_metric, self.test_metric = best_metric, test_metric
        self._checkpoint_step = 0

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step") or 0)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer, pl_module, {})

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started_at = self._checkpoint_step if trainer.ckpt_path else 0
        if trainer.global_step == started_at:  # nothing trained (e.g. a finished run resumed): nothing new
            return
        best = trainer.callback_metrics.get(self.best_metric)
        if best is not None and torch.isfinite(best):
            self._log(trainer, pl_module, {f"hp/{self.best_metric.replace('/', '_')}": float(best)})

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        result = trainer.callback_metrics.get(self.test_metric)
        if result is not None:
            self._log(trainer, pl_module, {f"hp/{self.test_metric.replace('/', '_')}": float(result)})

    def _log(self, trainer: pl.Trainer, module: pl.LightningModule, metrics: dict[str, float]) -> None:
        if not trainer.is_global_zero:
            return
        params = experiment_hparams(trainer, module)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(params, metrics)
            else:  # the others take no metrics with their hyperparameters
                logger.log_hyperparams(params)
                if metrics:
                    logger.log_metrics(metrics)
