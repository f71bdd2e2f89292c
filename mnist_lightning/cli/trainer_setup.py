"""What the CLI adds to the Trainer it builds: the always-on rails, safe checkpoint files, a quieter progress bar."""

from __future__ import annotations

import os
from typing import Any

from pytorch_lightning.callbacks import DeviceStatsMonitor, LearningRateMonitor, ProgressBar, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn

from mnist_lightning.callbacks.evaluation_step import EvaluationStep
from mnist_lightning.callbacks.hparams import HparamsRow
from mnist_lightning.callbacks.precision_check import PrecisionCheck
from mnist_lightning.callbacks.predictions import PredictionTable
from mnist_lightning.callbacks.resume import ResumeCheckpoint
from mnist_lightning.callbacks.run_state import RunState
from mnist_lightning.checkpoints.files import SafeCheckpointIO
from mnist_lightning.cli import refit  # noqa: I001
from mnist_lightning.errors import UserInputError

PROGRESS_BAR_REFRESH_STEPS = 50
BYTES_PER_PARAMETER = 16  # to train: weights, gradients and an optimizer's two moments (Adam's), float32
# Lightning's callbacks that refuse a trainer without a logger; with `--trainer.logger false` they step aside.
NEED_A_LOGGER = (LearningRateMonitor, DeviceStatsMonitor)


def always_on_callbacks(resume_hint: bool) -> list[Any]:
    """The rails every command runs with (the CLI's trainer defaults): `last.ckpt` and signal-safe interrupts,
    the state an exact resume needs, the HPARAMS row, evaluations logged at their checkpoint's step, and a line
    before training when the precision would be emulated on this CPU."""
    return [ResumeCheckpoint(resume_hint=resume_hint), RunState(), HparamsRow(), EvaluationStep(), PrecisionCheck()]


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [] if value is None else [value]


def trainer_plugins(trainer_config: Any) -> list[Any]:
    """The configured plugins, plus write-then-rename, weights-only checkpoint files unless one is given."""
    plugins = as_list(trainer_config.get("plugins"))
    if not any(hasattr(p, "save_checkpoint") for p in plugins):
        plugins.append(SafeCheckpointIO())
    return plugins


def trainer_callbacks(trainer_config: Any, subcommand: str, datamodule: Any, predictions_csv: str | None,
                      ckpt_path: str | None = None) -> list[Any]:
    """The configured callbacks, with a progress bar that redraws every 50 steps (Lightning's default redraws
    every step, which costs more than a step of this net), predict's table, the refit protocol's changes,
    and without the callbacks that need a logger when there is none."""
    callbacks = as_list(trainer_config.get("callbacks"))
    has_bar = any(isinstance(c, ProgressBar) for c in callbacks)
    if trainer_config.get("enable_progress_bar") is not False and not has_bar:
        callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
    if subcommand == "predict":
        callbacks.append(PredictionTable(csv_path=predictions_csv, ckpt_path=ckpt_path))
    no_validation = refit.no_validation_reason(datamodule, trainer_config.get("limit_val_batches"))
    if subcommand == "fit" and no_validation:  # the refit protocol (refit.py): no validation to watch
        callbacks, line = refit.without_validation_watchers(callbacks, no_validation)
        if line and rank_zero_only.rank == 0:
            print(line, flush=True)
    if trainer_config.get("logger") in (False, []) and subcommand != "predict":
        dropped = sorted({type(c).__name__ for c in callbacks if isinstance(c, NEED_A_LOGGER)})
        for name in dropped:
            rank_zero_warn(f"{name} needs a logger: left out of this run (--trainer.logger false).")
        callbacks = [c for c in callbacks if not isinstance(c, NEED_A_LOGGER)]
    return callbacks


def check_model_fits_in_memory(model: Any) -> None:
    """Training needs ~16 bytes per parameter; refuse, before any step, a net that cannot train here."""
    params = sum(p.numel() for p in model.parameters())
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    if memory and params * BYTES_PER_PARAMETER > memory:
        raise UserInputError(
            f"the net has {params:,} parameters: {params * 4 / 2**30:.1f} GiB for the weights, "
            f"~{params * BYTES_PER_PARAMETER / 2**30:.0f} GiB to train, more than this machine's "
            f"{memory / 2**30:.0f} GiB. Choose a smaller net.")
