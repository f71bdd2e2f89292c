"""The fully connected net, and the LightningModule that trains and evaluates it.

The net (`MLP`) is a plain `nn.Module`, so it can be exported, tested and reused without Lightning.
`MNISTClassifier` adds the loss, the optimizer, the schedule and the metrics.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.errors import CheckpointError, UserInputError

IMAGE_PIXELS = 28 * 28

# Lightning calls the `dataloader_iter` flavour of training_step experimental and warns that hooks get
# the index of the last batch a call consumed. MNISTClassifier relies on exactly that; what it means
# here is in the class docstring, and tests/test_model.py pins it (same updates as one batch per call,
# limits and max_steps counted in batches).
for _message in ("You are using the `dataloader_iter` step flavor", "Found `dataloader_iter` argument in the `training_step`"):
    warnings.filterwarnings("ignore", message=_message)


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


def _check_hparams(hidden_sizes: list[int], lr: float, weight_decay: float, dropout: float,
                   input_dropout: float, label_smoothing: float, warmup: float, num_classes: int,
                   steps_per_call: int) -> None:
    if not hidden_sizes or any(not isinstance(h, int) or h <= 0 for h in hidden_sizes):
        raise UserInputError(f"model.hidden_sizes must be a non-empty list of positive integers; got {hidden_sizes!r}.")
    if not lr > 0:
        raise UserInputError(f"model.lr must be > 0; got {lr!r}.")
    if not weight_decay >= 0:
        raise UserInputError(f"model.weight_decay must be >= 0; got {weight_decay!r}.")
    for name, p in (("dropout", dropout), ("input_dropout", input_dropout), ("label_smoothing", label_smoothing),
                    ("warmup", warmup)):
        if not 0 <= p < 1:
            raise UserInputError(f"model.{name} must be in [0, 1); got {p!r}.")
    if num_classes < 2:
        raise UserInputError(f"model.num_classes must be >= 2; got {num_classes!r}.")
    if not isinstance(steps_per_call, int) or steps_per_call < 1:
        raise UserInputError(f"model.steps_per_call must be an integer >= 1; got {steps_per_call!r}.")


class MNISTClassifier(pl.LightningModule):
    """Trains `MLP` with cross-entropy and logs accuracy per stage.

    Logged: `train/loss` (per epoch; `train/loss_step` every `log_every_n_steps` optimizer steps),
    `train/acc`, `train/lr` (at each epoch end), `val/loss`, `val/acc`, `val/acc_best`, `test/loss`,
    `test/acc`; TensorBoard's x-axis is the optimizer step (`global_step`) throughout.

    Training takes `steps_per_call` batches per call of `training_step`, one optimizer step per
    batch, through Lightning's `dataloader_iter` and manual-optimization APIs (`manual_backward`,
    `optimizer.step()`, so precision plugins and DDP still apply). The updates are exactly those of
    one batch per call; what changes is how often Lightning's per-step machinery runs (hooks of
    every callback, logger and progress bookkeeping): about 0.3 ms per call on a CPU, half the cost
    of a 64-image step of the 784-50-10 net, so with one call per batch Lightning's loop alone took
    ~1.4x the time of a bare PyTorch loop (README, "Speed"). Consequences: hooks such as `on_train_batch_end` and a SIGINT/
    SIGTERM checkpoint come every `steps_per_call` batches; validation inside an epoch
    (`val_check_interval` < 1 epoch in batches) needs `steps_per_call: 1`; Lightning's
    `gradient_clip_val` and `accumulate_grad_batches` are for automatic optimization only.

    Args:
        hidden_sizes: widths of the hidden layers; ``[50]`` is the tutorial's net.
        lr: learning rate of Adam (the peak rate with ``lr_schedule: onecycle``).
        optimizer: ``adam`` (the tutorial's) or ``adamw`` (decoupled weight decay).
        weight_decay: L2 (adam) or decoupled (adamw) weight decay.
        lr_schedule: ``none`` (constant, the tutorial's), ``onecycle`` or ``cosine``, stepped per batch.
        dropout, input_dropout, batch_norm: see `MLP`.
        label_smoothing: of the cross-entropy targets.
        warmup: share of the steps that ``onecycle`` spends raising the learning rate to ``lr``.
        num_classes: 10 for every MNIST-family dataset.
        steps_per_call: batches (optimizer steps) per call of `training_step`; 1 is Lightning's usual rhythm.
    """

    def __init__(
        self,
        hidden_sizes: list[int] = [50],  # noqa: B006 - a list is what LightningCLI and YAML speak
        lr: float = 1e-3,
        optimizer: Literal["adam", "adamw"] = "adam",
        weight_decay: float = 0.0,
        lr_schedule: Literal["none", "onecycle", "cosine"] = "none",
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        batch_norm: bool = False,
        label_smoothing: float = 0.0,
        warmup: float = 0.25,
        num_classes: int = 10,
        steps_per_call: int = 50,
    ):
        super().__init__()
        hidden_sizes = list(hidden_sizes)
        _check_hparams(hidden_sizes, lr, weight_decay, dropout, input_dropout, label_smoothing, warmup, num_classes,
                       steps_per_call)
        self.save_hyperparameters()
        self.automatic_optimization = False  # training_step steps the optimizer itself, see the class docstring
        self.net = MLP(hidden_sizes, num_classes, dropout, input_dropout, batch_norm)
        # validate_args=False: the argument checks cost more than the update on a 64-image batch.
        accuracy = dict(task="multiclass", num_classes=num_classes, average="micro", validate_args=False)
        self.train_acc = MulticlassAccuracy(**{k: v for k, v in accuracy.items() if k != "task"})
        self.val_acc = self.train_acc.clone()
        self.test_acc = self.train_acc.clone()
        # Training: nan_strategy="disable" skips a NaN scan (a device sync) on every update; a NaN
        # loss is caught by ResumeCheckpoint, which stops the run with a clear message. Not for the
        # evaluation means: with "disable", torchmetrics 1.9 drops the `weight` argument, and they
        # weight each batch by its size.
        self.train_loss = MeanMetric(nan_strategy="disable")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.test_count = SumMetric()
        self.val_acc_best = MaxMetric()
        # Metric states go into checkpoints, so a run resumed mid-epoch logs the same epoch means,
        # and the best validation accuracy survives a resume.
        for metric in (self.train_acc, self.train_loss, self.val_acc_best):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y)  # evaluation: no label smoothing
        return loss, logits.argmax(dim=1), y

    # ------------------------------------------------------------------------------ training
    def training_step(self, dataloader_iter: Iterator[tuple[Any, int, int]]) -> dict[str, torch.Tensor] | None:
        """Up to `steps_per_call` optimizer steps, one per batch drawn from the training loader."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        every = self.trainer.log_every_n_steps
        losses, preds, targets = [], [], []
        for batch, _, _ in itertools.islice(dataloader_iter, self._steps_this_call()):
            x, y = self._on_device(batch)
            logits = self(x)
            loss = F.cross_entropy(logits, y, label_smoothing=self.hparams.label_smoothing)
            optimizer.zero_grad()
            self.manual_backward(loss)
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(loss.detach())
            preds.append(logits.argmax(dim=1))
            targets.append(y)
            if every and self.global_step % every == 0:
                for logger in self.loggers:  # straight to the loggers: the x-axis is the optimizer step
                    logger.log_metrics({"train/loss_step": loss.item()}, step=self.global_step)
        if not losses:
            return None
        # Epoch means accumulate in metric objects: one update per call, no host sync.
        step_losses = torch.stack(losses)
        self.train_loss.update(step_losses)
        self.train_acc.update(torch.cat(preds), torch.cat(targets))
        # A NaN or infinite loss at any of the steps makes the mean so (mnist_lightning.callbacks reads it).
        return {"loss": step_losses.mean()}

    def _steps_this_call(self) -> int:
        steps = self.hparams.steps_per_call
        if self.trainer.max_steps >= 0:  # stop exactly at max_steps, not at the next multiple of steps_per_call
            steps = min(steps, self.trainer.max_steps - self.global_step)
        return max(steps, 0)

    def _on_device(self, batch: Any) -> Any:
        # With `dataloader_iter` Lightning hands batches over as loaded; do what it does for plain batches.
        batch = self.trainer.precision_plugin.convert_input(batch)
        if batch[0].device != self.device:
            batch = self.trainer.strategy.batch_to_device(batch)
        return batch

    def on_train_start(self) -> None:
        trainer = self.trainer
        check_every = trainer.val_check_batch
        mid_epoch = isinstance(check_every, int) and (check_every < trainer.num_training_batches
                                                      or trainer.check_val_every_n_epoch is None)
        if self.hparams.steps_per_call > 1 and mid_epoch and trainer.limit_val_batches != 0:
            # Lightning counts training_step calls there, not batches, so the interval would be wrong.
            raise UserInputError(
                f"validation every {check_every} batches (trainer.val_check_interval) needs one batch per "
                f"training_step call: add --model.steps_per_call 1 (now {self.hparams.steps_per_call})."
            )

    def on_train_epoch_end(self) -> None:
        # batch_size: Lightning asks for one with `dataloader_iter`; these are single epoch-level values.
        self.log("train/loss", self.train_loss.compute(), batch_size=1)
        self.log("train/acc", self.train_acc.compute(), prog_bar=True, batch_size=1)
        # The learning rate here rather than Lightning's LearningRateMonitor: that callback cost ~4%
        # of every step of this net with one batch per training_step call (Lightning calls each
        # callback for every per-batch hook), and it stops runs that have no logger.
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=1)
        self._log_x_axis()
        self.train_loss.reset()
        self.train_acc.reset()

    def _log_x_axis(self) -> None:
        """Plot epoch-level values at the optimizer step, like `train/loss_step`.

        A logged `step` is what Lightning's logger connector uses as the x-axis; without it Lightning
        uses its count of training_step calls, `steps_per_call` times smaller. (It then adds `epoch`
        only when no `step` is logged, so that is logged here too.)
        """
        self.log("step", float(self.global_step), batch_size=1)
        self.log("epoch", float(self.current_epoch), batch_size=1)

    # ------------------------------------------------------------------------------ evaluation
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, y = self._evaluate(batch)
        self.val_loss.update(loss, weight=len(y))
        self.val_acc.update(preds, y)
        return {"preds": preds}  # for callbacks (mnist_lightning.figures), so they need no second forward pass

    def on_validation_epoch_end(self) -> None:
        acc = self.val_acc.compute()
        self.log("val/loss", self.val_loss.compute())
        self.log("val/acc", acc, prog_bar=True)
        if not self.trainer.sanity_checking:  # a sanity check is not an epoch and must not set the best
            self.val_acc_best.update(acc)
            self.log("val/acc_best", self.val_acc_best.compute())
            self._log_x_axis()
        self.val_loss.reset()
        self.val_acc.reset()

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        loss, preds, y = self._evaluate(batch)
        self.test_loss.update(loss, weight=len(y))
        self.test_acc.update(preds, y)
        self.test_count.update(torch.tensor(len(y), dtype=torch.float64, device=loss.device))

    def on_test_epoch_end(self) -> None:
        acc, total = self.test_acc.compute(), int(self.test_count.compute())
        self.log("test/loss", self.test_loss.compute())
        self.log("test/acc", acc)
        self._log_x_axis()
        correct = round(float(acc) * total)
        # The tutorial's closing line; self.print writes once (rank 0) and around the progress bar.
        self.print(f"Got {correct} / {total} with accuracy {100 * correct / total:.2f}")
        self._log_hparams_with({"hp/test_acc": float(acc)})
        self.test_loss.reset()
        self.test_acc.reset()
        self.test_count.reset()

    def on_fit_end(self) -> None:
        best = self.val_acc_best.max_value  # state, not compute(): also right after a resume
        if torch.isfinite(best):
            self._log_hparams_with({"hp/val_acc_best": float(best)})

    def _log_hparams_with(self, metrics: dict[str, float]) -> None:
        """Fill TensorBoard's hparams tab with real final metrics (no `hp_metric = -1` placeholder)."""
        if self.logger is not None and self.trainer.is_global_zero:
            self.logger.log_hyperparams(self.hparams, metrics)

    def predict_step(self, batch: tuple[torch.Tensor, Any], batch_idx: int) -> torch.Tensor:
        """Class probabilities (N, classes)."""
        return self(batch[0]).softmax(dim=1)

    # ------------------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer_class = torch.optim.AdamW if hp.optimizer == "adamw" else torch.optim.Adam
        # The fused kernel is the same Adam in one call instead of a Python loop over parameters:
        # on this net's 64-image steps that is ~110 us of a ~600 us step on a CPU.
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
        return {"optimizer": optimizer, "lr_scheduler": scheduler}  # stepped per batch by training_step

    # ------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning stores no RNG state; dropout draws from the global RNG, so an exact resume needs it.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_architecture(checkpoint)
        rng = checkpoint.get("rng_state")
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
