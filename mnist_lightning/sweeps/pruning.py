"""Reports a trial's metric to Optuna after each validation, and stops the fit when Optuna says prune."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import optuna
import pytorch_lightning as pl
from pytorch_lightning.cli import SaveConfigCallback

from mnist_lightning.sweeps.fit_options import metric_not_logged


class PruneHopelessTrials(pl.Callback):
    """Reports the sweep's metric to the trial after each validation, and stops the fit when Optuna says prune.

    optuna-integration's callback is written for `lightning.pytorch`; this project's Trainer is
    `pytorch_lightning`, a separate namespace it does not recognise.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Known from the start, also if the trial dies; absolute, with its host and the run's saved config,
        # so that any worker, on any machine, can find the run and write best.yaml from the study alone.
        self.trial.set_user_attr("host", socket.gethostname())
        self.trial.set_user_attr("run_dir", os.path.abspath(trainer.log_dir))
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        saved = Path(trainer.log_dir) / saver.config_filename if saver else None
        if saved is not None and saved.is_file():
            self.trial.set_user_attr("config", saved.read_text())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:  # check_one_batch has seen it logged: a part that logs it only sometimes
            raise metric_not_logged(self.metric, sorted(trainer.callback_metrics))
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True
