"""Where an evaluation outside `fit` is logged: at the step of the checkpoint it evaluates.

A `validate` or `test` of a checkpoint usually logs into the checkpoint's own run. Lightning logs an
evaluation outside `fit` at step 0 (the fit loop is not restored), with an `epoch` scalar, and
TensorBoard keeps, per tag, no point at or after a later event's step: the run's `epoch` and `val/*`
curves would collapse to that one point. So the results are logged at the checkpoint's own step
(Lightning takes a logged `step` as the x-axis, and then adds no `epoch`); the module logs them under
tags the fit never writes, `validate/*` and `test/*`.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl


class CheckpointStep(pl.Callback):
    """Knows the step an evaluation outside `fit` is logged at: the evaluated checkpoint's global step (the
    trainer's own when no checkpoint was loaded, e.g. `trainer.test(model)` right after `trainer.fit`)."""

    def __init__(self) -> None:
        self._checkpoint_step = 0

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step") or 0)

    def evaluated_step(self, trainer: pl.Trainer) -> int:
        return self._checkpoint_step if trainer.ckpt_path else trainer.global_step


class EvaluationStep(CheckpointStep):
    """Logs `step` = the evaluated checkpoint's global step at the end of `validate` and `test`."""

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn != "fit":
            pl_module.log("step", float(self.evaluated_step(trainer)))

    def on_test_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("step", float(self.evaluated_step(trainer)))
