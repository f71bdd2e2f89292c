"""The LightningModule: trains any injected net with cross-entropy and logs loss and accuracy per stage.

    model = MNISTClassifier()                                   # the tutorial: 784-50-10 MLP, Adam 1e-3
    model = MNISTClassifier(net=MLP([256, 128]), optimizer=partial(torch.optim.SGD, lr=0.05))
    pl.Trainer(max_epochs=3).fit(model, MNISTDataModule())

    python -m mnist_lightning fit --model.net my_nets.SmallCNN --model.optimizer torch.optim.SGD

The net, the optimizer and the schedule are passed in (class paths under LightningCLI), so this class
is the recipe only: `training_step(batch, batch_idx)` returns the loss and Lightning owns backward,
stepping, clipping, accumulation, precision, device transfer and the logging x-axis. The rails around
it (exact resume, the HPARAMS row, where an evaluation is logged) are callbacks in
`mnist_lightning.callbacks`, which the CLI adds; `FastMNISTClassifier` is the opt-in speed path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import IO, Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.checkpoints.loading import check_architecture, keep_part_configs, load_checked
from mnist_lightning.checkpoints.parts import keep_saveable_hparams
from mnist_lightning.errors import quiet_warnings
from mnist_lightning.models.metrics import TrainingMeans, values_reach_loggers
from mnist_lightning.models.mlp import MLP
from mnist_lightning.models.net_output import check_net_output
from mnist_lightning.models.optimization import built_as_setting, parameter_groups
from mnist_lightning.models.schedules import RunSchedule
from mnist_lightning.types import AtLeastTwo, UnitShare

Batch = tuple[torch.Tensor, torch.Tensor]
# The parts a user injects; their configs are the run's hyperparameters (checkpoints/parts.py).
PARTS = ("net", "optimizer", "lr_scheduler")


class MNISTClassifier(pl.LightningModule):
    """Trains a net with cross-entropy and an injected optimizer, and logs loss and accuracy per stage.

    Logged (TensorBoard's x-axis is the optimizer step): `train/loss_step` every `log_every_n_steps`;
    per epoch `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_best`; after `test`,
    `test/loss` and `test/acc`; after `validate`, `validate/loss` and `validate/acc`.

    Args:
        net: any `nn.Module` from a float batch (N, 1, 28, 28) to logits (N, num_classes); the
            tutorial's `MLP` when left out. Under the CLI a class path, e.g. ``my_nets.SmallCNN``.
        optimizer: builds the optimizer from parameter groups, e.g. ``torch.optim.SGD``. Weight decay
            never applies to biases and normalisation scales (models/optimization.py says why).
        lr_scheduler: a torch scheduler built from the optimizer, or a `RunSchedule` (``OneCycle``,
            ``Cosine``) that spans the run, stepped per optimizer step; none keeps the rate constant.
        lr_scheduler_interval: when a torch scheduler steps: every ``epoch`` or every optimizer ``step``.
        label_smoothing: of the training cross-entropy targets (evaluation uses plain targets).
        num_classes: of the metrics; the CLI sets it from the data (``data.num_classes``).
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: RunSchedule | LRSchedulerCallable | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        label_smoothing: UnitShare = 0.0,
        num_classes: AtLeastTwo = 10,
    ):
        super().__init__()
        with quiet_warnings(r".*is an instance of `nn.Module` and is already saved"):
            self.save_hyperparameters(logger=False)  # the HPARAMS row is callbacks/hparams.py's
        keep_saveable_hparams(self, PARTS)  # plain data only: a checkpoint must load weights-only
        self.net = net if net is not None else MLP(num_classes=int(num_classes))
        self.optimizer_factory: Callable[[Iterable[Any]], torch.optim.Optimizer] = optimizer
        self.lr_scheduler_factory = lr_scheduler
        # One metric object per stage. validate_args=False: the checks cost more than a small batch's update.
        self.val_acc = MulticlassAccuracy(num_classes=int(num_classes), average="micro", validate_args=False)
        self.test_acc = self.val_acc.clone()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.train_metrics = TrainingMeans()  # the epoch's mean loss and accuracy, one update per step
        self.test_count = SumMetric()  # images tested, for the tutorial's "Got N / 10000" line
        self.val_acc_best = MaxMetric()
        # In checkpoints: a run resumed mid-epoch logs the same epoch means and keeps its best accuracy.
        for metric in (self.train_metrics, self.val_acc_best):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        check_net_output(self.net, self.hparams.num_classes)  # one line before any step, not a shape error deep in

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, training: bool = False) -> torch.Tensor:
        """Cross-entropy, the one loss of every stage and class; label smoothing in training only."""
        smoothing = self.hparams.label_smoothing if training else 0.0
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)

    def model_step(self, batch: Batch, training: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, predicted classes and targets of one batch."""
        x, y = batch
        logits = self(x)
        return self.loss(logits, y, training), logits.argmax(dim=1), y

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, y = self.model_step(batch, training=True)
        self.train_metrics.update(loss, preds, y)
        # "loss" is what Lightning optimises; "step_loss" reaches on_train_batch_end as computed.
        return {"loss": loss, "step_loss": loss.detach()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # Logged only on the steps whose value reaches the loggers: `log_every_n_steps` thins what is
        # written, not the cost of each `self.log` call (docs/speed.md).
        if isinstance(outputs, dict) and "step_loss" in outputs and values_reach_loggers(self.trainer):
            self.log("train/loss_step", outputs["step_loss"], on_step=True, on_epoch=False, batch_size=1)

    def on_train_epoch_end(self) -> None:
        # Computed and reset here rather than logged as a metric object in the step: Lightning resets
        # logged objects only after the epoch-end checkpoint, which would carry a finished epoch's
        # counts into a resumed run. batch_size=1: epoch-level values.
        loss, accuracy = self.train_metrics.compute()
        self.log("train/loss", loss, batch_size=1)
        self.log("train/acc", accuracy, prog_bar=True, batch_size=1)
        self.train_metrics.reset()

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path is None:  # a sanity check or an earlier `validate` is not the best epoch
            self.val_acc_best.reset()

    # ------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, y = self.model_step(batch)
        self.val_loss.update(loss, weight=len(y))
        self.val_acc.update(preds, y)
        # `validate` of a checkpoint logs under validate/*, so the fit's val/* curves stay as drawn.
        stage = "val" if self.trainer.state.fn == "fit" else "validate"
        self.log(f"{stage}/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        return {"preds": preds}  # for callbacks (figures), so they need no second forward pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":  # the best is over a fit's epochs
            return
        self.val_acc_best.update(self.val_acc.compute())
        self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, preds, y = self.model_step(batch)
        self.test_loss.update(loss, weight=len(y))
        self.test_acc.update(preds, y)
        self.test_count.update(torch.tensor(len(y), dtype=torch.float64, device=loss.device))
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/acc", self.test_acc, on_step=False, on_epoch=True)

    def on_test_epoch_end(self) -> None:
        acc, total = float(self.test_acc.compute()), int(self.test_count.compute())
        correct = round(acc * total)
        self.print(f"Got {correct} / {total} with accuracy {100 * correct / total:.2f}")  # the tutorial's line
        self.test_count.reset()

    def predict_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities (N, classes)."""
        return self(batch[0]).softmax(dim=1)

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        with built_as_setting("model.optimizer", self.optimizer_factory):
            optimizer = self.optimizer_factory(parameter_groups(self, self.optimizer_factory))
        make_schedule = self.lr_scheduler_factory
        if make_schedule is None:
            return optimizer
        with built_as_setting("model.lr_scheduler", make_schedule):
            if isinstance(make_schedule, RunSchedule):  # its length is the run's optimizer steps
                scheduler, interval = make_schedule(optimizer, int(self.trainer.estimated_stepping_batches)), "step"
            else:
                scheduler, interval = make_schedule(optimizer), self.hparams.lr_scheduler_interval
        config: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # pytorch_lightning.cli.ReduceLROnPlateau names its metric; torch's own watches the validation loss.
            config["monitor"] = getattr(scheduler, "monitor", None) or "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # ------------------------------------------------------------------------------ checkpoints
    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | os.PathLike | IO[bytes], map_location: Any = None,
                             hparams_file: str | os.PathLike | None = None, strict: bool | None = None,
                             weights_only: bool | None = None, **kwargs: Any) -> Any:
        """Lightning's, always weights-only, after refusing a checkpoint whose saved parts name anything but
        classes of the kind each slot takes (checkpoints/trust.py says why)."""
        checked = load_checked(cls, checkpoint_path, hparams_file)
        model = super().load_from_checkpoint(checked.buffer, map_location=map_location, hparams_file=hparams_file,
                                             strict=strict, weights_only=True, **kwargs)
        keep_part_configs(model, checked.checkpoint, PARTS)  # so a checkpoint saved again still has them
        return model

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_architecture(self, checkpoint)  # one line naming both nets, before any weight is copied
