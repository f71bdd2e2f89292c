"""What an exact resume needs that Lightning does not save: the global RNG, the seed and the schedule's length."""

from __future__ import annotations

import os
from typing import Any

import pytorch_lightning as pl
import torch

from mnist_lightning.errors import UserInputError
from mnist_lightning.models.schedules import RunSchedule


class RunState(pl.Callback):
    """Saves the torch (and CUDA) RNG state, the seed and the run's length in every checkpoint, restores the RNG
    on a resumed `fit`, and refuses a resume whose settings change the length of a schedule that spans the run.

    Dropout draws from the global RNG and the data order derives from the seed, so an exact resume needs
    both. A `RunSchedule` (one-cycle, cosine) is as long as the run's optimizer steps, which
    `max_epochs`, `limit_train_batches`, `accumulate_grad_batches`, `max_steps`, the devices and the
    batch size decide together: a resume with another length would overrun the schedule (torch's
    "Tried to step N times") or end half-way through it. The checkpoint-time checks of the CLI read the
    `seed` and `max_epochs` saved here (cli/checkpoint_settings.py).
    """

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()
        if "PL_GLOBAL_SEED" in os.environ:
            checkpoint["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        checkpoint["max_epochs"] = trainer.max_epochs
        checkpoint["schedule_spans_run"] = spans = _schedule_spans_run(pl_module)
        if spans:
            checkpoint["schedule_steps"] = int(trainer.estimated_stepping_batches)

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.state.fn != "fit":
            return  # an evaluation steps no schedule and draws nothing a resume must replay
        # Here, before `configure_optimizers` builds the schedule: a length it cannot take would fail there first.
        steps = checkpoint.get("schedule_steps")
        if checkpoint.get("schedule_spans_run") and steps is not None and _schedule_spans_run(pl_module):
            _refuse_another_length(int(trainer.estimated_stepping_batches), saved=int(steps))
        rng = checkpoint.get("rng_state")
        if rng is not None:
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])


def _refuse_another_length(steps: int, saved: int) -> None:
    if steps != saved:
        raise UserInputError(
            f"resuming with settings that make the run {steps} optimizer steps long, but the checkpoint's "
            f"schedule spans {saved} steps (trainer.max_epochs, limit_train_batches, accumulate_grad_batches, "
            "max_steps, devices and data.batch_size decide it): resume with the run's own settings, e.g. "
            "--config <run>/config.yaml without those options; to change them, start a new run.")


def _schedule_spans_run(module: pl.LightningModule) -> bool:
    return isinstance(getattr(module, "lr_scheduler_factory", None), RunSchedule)
