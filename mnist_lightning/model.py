"""The fully connected net, and the LightningModule that trains and evaluates it.

    model = MNISTClassifier(hidden_sizes=[50], lr=1e-3)      # the tutorial's 784-50-10 net, Adam 1e-3
    pl.Trainer(max_epochs=3).fit(model, MNISTDataModule())

The net (`MLP`) is a plain `nn.Module`, so it can be exported, tested and reused without Lightning.
`MNISTClassifier` is the textbook LightningModule around it: `training_step(batch, batch_idx)`
returns the loss and Lightning owns backward, stepping, clipping, accumulation, precision, device
transfer and the logging x-axis. `mnist_lightning.fast` holds an opt-in subclass that trades some of
that away for speed.
"""

from __future__ import annotations

import os
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from jsonargparse.typing import NonNegativeFloat, PositiveFloat, PositiveInt, restricted_number_type
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.errors import CheckpointError, UserInputError

IMAGE_PIXELS = 28 * 28

# A probability-like share in [0, 1): `--help` shows the range, and the CLI refuses values outside it.
UnitShare = restricted_number_type("UnitShare", float, [(">=", 0), ("<", 1)], join="and")
AtLeastTwo = restricted_number_type("AtLeastTwo", int, (">=", 2))

Batch = tuple[torch.Tensor, torch.Tensor]


class MLP(nn.Module):
    """784 -> hidden... -> classes. ReLU between layers, none on the logits.

    With the defaults it is the tutorial's 784-50-10 net. Options for stronger recipes:
    `batch_norm` (Linear -> BatchNorm -> ReLU), `dropout` after each hidden ReLU, and
    `input_dropout` on the pixels.
    """

    def __init__(
        self,
        hidden_sizes: list[int] | tuple[int, ...] = (50,),
        num_classes: int = 10,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = IMAGE_PIXELS
        for size in hidden_sizes:
            layers.append(nn.Linear(width, size, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: a float batch (N, 1, 28, 28) or (N, 784); returns logits (N, classes)."""
        return self.layers(x)


def check_hparams(hidden_sizes: list[int], lr: float, weight_decay: float, shares: dict[str, float],
                  num_classes: int) -> None:
    """The ranges the CLI's types enforce, checked once more for callers of the Python API."""
    if not hidden_sizes or any(not isinstance(h, int) or h <= 0 for h in hidden_sizes):
        raise UserInputError(f"model.hidden_sizes must be a non-empty list of positive integers; got {hidden_sizes!r}.")
    if not lr > 0:
        raise UserInputError(f"model.lr must be > 0; got {lr!r}.")
    if not weight_decay >= 0:
        raise UserInputError(f"model.weight_decay must be >= 0; got {weight_decay!r}.")
    for name, share in shares.items():
        if not 0 <= share < 1:
            raise UserInputError(f"model.{name} must be in [0, 1); got {share!r}.")
    if num_classes < 2:
        raise UserInputError(f"model.num_classes must be >= 2; got {num_classes!r}.")


class MNISTClassifier(pl.LightningModule):
    """Trains `MLP` with cross-entropy and Adam, and logs loss and accuracy per stage.

    Logged (TensorBoard's x-axis is the optimizer step): `train/loss_step` every
    `log_every_n_steps`; per epoch `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_best`;
    after `test`, `test/loss` and `test/acc`. The learning rate comes from Lightning's
    `LearningRateMonitor` (configs/default.yaml).

    Args:
        hidden_sizes: widths of the hidden layers; ``[50]`` is the tutorial's net.
        lr: learning rate of Adam (the peak rate with ``lr_schedule: onecycle``).
        optimizer: ``adam`` (the tutorial's) or ``adamw`` (decoupled weight decay).
        weight_decay: L2 (adam) or decoupled (adamw) weight decay, on weight matrices only.
        lr_schedule: ``none`` (constant, the tutorial's), ``onecycle`` or ``cosine``, stepped per batch.
        dropout: after each hidden ReLU.
        input_dropout: on the pixels.
        batch_norm: Linear -> BatchNorm -> ReLU in each hidden layer.
        label_smoothing: of the training cross-entropy targets (evaluation uses plain targets).
        warmup: share of the steps that ``onecycle`` spends raising the learning rate to ``lr``.
        num_classes: 10 for every MNIST-family dataset.
    """

    def __init__(
        self,
        hidden_sizes: list[PositiveInt] = [50],  # noqa: B006 - a list is what LightningCLI and YAML speak
        lr: PositiveFloat = 1e-3,
        optimizer: Literal["adam", "adamw"] = "adam",
        weight_decay: NonNegativeFloat = 0.0,
        lr_schedule: Literal["none", "onecycle", "cosine"] = "none",
        dropout: UnitShare = 0.0,
        input_dropout: UnitShare = 0.0,
        batch_norm: bool = False,
        label_smoothing: UnitShare = 0.0,
        warmup: UnitShare = 0.25,
        num_classes: AtLeastTwo = 10,
    ):
        super().__init__()
        # Plain Python numbers in the hyperparameters (the CLI hands over its range types), so a
        # checkpoint's hyper_parameters load with torch.load(weights_only=True).
        hidden_sizes = [int(h) if isinstance(h, int) else h for h in hidden_sizes]
        lr, weight_decay, dropout, input_dropout = float(lr), float(weight_decay), float(dropout), float(input_dropout)
        label_smoothing, warmup, num_classes = float(label_smoothing), float(warmup), int(num_classes)
        check_hparams(hidden_sizes, lr, weight_decay, dict(dropout=dropout, input_dropout=input_dropout,
                      label_smoothing=label_smoothing, warmup=warmup), num_classes)
        # logger=False: Lightning would log these (and LightningCLI's internal keys) at fit start;
        # `experiment_hparams` logs what defines the experiment instead.
        self.save_hyperparameters(logger=False)
        self.net = MLP(hidden_sizes, num_classes, dropout, input_dropout, batch_norm)
        # One metric object per stage. validate_args=False: the argument checks cost more than the
        # update itself on a 64-image batch.
        self.train_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.val_acc = self.train_acc.clone()
        self.test_acc = self.train_acc.clone()
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        self.test_count = SumMetric()  # images tested, for the tutorial's "Got N / 10000" line
        self.val_acc_best = MaxMetric()
        # Metric states go into checkpoints, so a run resumed mid-epoch logs the same epoch means,
        # and the best validation accuracy survives a resume.
        for metric in (self.train_acc, self.train_loss, self.val_acc_best):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def model_step(self, batch: Batch, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Loss, predicted classes and targets of one batch."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        return loss, logits.argmax(dim=1), y

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, preds, y = self.model_step(batch, self.hparams.label_smoothing)
        self.log_training(loss, preds, y)
        return loss

    def log_training(self, loss: torch.Tensor, preds: torch.Tensor, y: torch.Tensor) -> None:
        """Update the epoch's training metrics with one or more batches, and log the step loss."""
        self.train_loss.update(loss)
        self.train_acc.update(preds, y)
        self.log("train/loss_step", loss.detach().mean(), on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        # Computed, logged and reset here rather than logged as metric objects in the step: Lightning
        # resets logged objects only after the epoch-end checkpoint, which then carries a finished
        # epoch's counts into the next epoch of a resumed run (tests/test_resume.py shows it).
        # batch_size=1: single epoch-level values (the fast subclass's training_step gives Lightning no batch).
        self.log("train/loss", self.train_loss.compute(), batch_size=1)
        self.log("train/acc", self.train_acc.compute(), prog_bar=True, batch_size=1)
        self.train_loss.reset()
        self.train_acc.reset()

    def on_train_start(self) -> None:
        # A sanity check or an earlier `validate` must not count as the best epoch (resumed runs keep theirs).
        if self.trainer.ckpt_path is None:
            self.val_acc_best.reset()

    # ------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, y = self.model_step(batch)
        self.val_loss.update(loss, weight=len(y))
        self.val_acc.update(preds, y)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log("val/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        return {"preds": preds}  # for callbacks (mnist_lightning.figures), so they need no second forward pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a sanity check is not an epoch and must not set the best
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
        # The tutorial's closing line; self.print writes once (rank 0) and around the progress bar.
        self.print(f"Got {correct} / {total} with accuracy {100 * correct / total:.2f}")
        self.test_count.reset()
        self._log_hparams_with({"hp/test_acc": acc})

    def on_fit_start(self) -> None:
        self._log_hparams_with({})

    def on_fit_end(self) -> None:
        best = self.val_acc_best.max_value  # state, not compute(): also right after a resume
        if torch.isfinite(best):
            self._log_hparams_with({"hp/val_acc_best": float(best)})

    def experiment_hparams(self) -> dict[str, Any]:
        """What defines this experiment, for TensorBoard's HPARAMS tab: the model's and the data's
        hyperparameters, the seed, epochs, precision and devices; nothing internal, booleans as words."""
        trainer = self.trainer
        params: dict[str, Any] = {"model.class": type(self).__name__}
        params.update({f"model.{k}": v for k, v in self.hparams.items() if not k.startswith("_")})
        datamodule = trainer.datamodule
        for key in ("dataset", "batch_size", "normalize", "deskew", "val_size", "split_seed"):
            if datamodule is not None and key in datamodule.hparams:
                params[f"data.{key}"] = datamodule.hparams[key]
        params.update({"seed": os.environ.get("PL_GLOBAL_SEED", "none"), "trainer.max_epochs": trainer.max_epochs,
                       "trainer.precision": str(trainer.precision), "trainer.devices": trainer.world_size})
        return {k: ("true" if v else "false") if isinstance(v, bool) else v if isinstance(v, int | float | str) else str(v)
                for k, v in params.items()}

    def _log_hparams_with(self, metrics: dict[str, float]) -> None:
        """Fill TensorBoard's hparams tab with real final metrics (no `hp_metric = -1` placeholder)."""
        if not self.trainer.is_global_zero:
            return
        for logger in self.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.log_hyperparams(self.experiment_hparams(), metrics)
            else:  # the others take no metrics with their hyperparameters
                logger.log_hyperparams(self.experiment_hparams())
                if metrics:
                    logger.log_metrics(metrics)

    def predict_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities (N, classes)."""
        return self(batch[0]).softmax(dim=1)

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel: the same Adam in one call instead of a Python loop over the parameters.
        fused = self.device.type in ("cpu", "cuda")
        # Weight decay on the weight matrices only: decaying biases and batch-norm scales only
        # fights the normalisation (the usual practice, e.g. in timm and nanoGPT).
        matrices = [p for p in self.parameters() if p.ndim >= 2]
        others = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": matrices, "weight_decay": hp.weight_decay}, {"params": others, "weight_decay": 0.0}]
        optimizer = optimizer_class(groups if hp.weight_decay else self.parameters(), lr=hp.lr, fused=fused or None)
        if hp.lr_schedule == "none":
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if hp.lr_schedule == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=total_steps,
                                                            pct_start=hp.warmup)
        else:
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning stores no RNG state; dropout draws from the global RNG, so an exact resume needs it.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if "PL_GLOBAL_SEED" in os.environ:  # the data order derives from it: a resume must keep it
            checkpoint["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        # `_trainer`: the public `trainer` property raises where there is none (a bare `torch.save`-style call).
        if self._trainer is not None:  # a per-batch schedule's length derives from it (see __main__'s resume checks)
            checkpoint["max_epochs"] = self.trainer.max_epochs
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_architecture(checkpoint)
        rng = checkpoint.get("rng_state")
        # `_trainer`: a model loaded outside a Trainer (load_from_checkpoint) has none, and the public
        # `trainer` property raises there; the RNG belongs to a resumed fit only.
        if rng is not None and self._trainer is not None and self.trainer.state.fn == "fit":
            torch.set_rng_state(rng["torch"])
            if "cuda" in rng and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])

    def _check_architecture(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, before anything is copied, weights whose shapes differ from this net's."""
        own = self.state_dict()
        theirs = checkpoint.get("state_dict", {})
        mismatched = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
            for k, v in theirs.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
        ]
        missing = sorted(set(k for k in own if k.startswith("net.")) - set(theirs))
        unexpected = sorted(set(k for k in theirs if k.startswith("net.")) - set(own))
        if mismatched or missing or unexpected:
            ckpt_hidden = checkpoint.get("hyper_parameters", {}).get("hidden_sizes")
            raise CheckpointError(
                f"the checkpoint's net (hidden_sizes={ckpt_hidden}) does not match this model "
                f"(hidden_sizes={self.hparams.hidden_sizes}): "
                + "; ".join(mismatched + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected])
            )
