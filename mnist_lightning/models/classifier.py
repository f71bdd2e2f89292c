"""The LightningModule: trains any injected net with cross-entropy and logs loss and accuracy per stage."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import IO, Any, Literal

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.loggers import TensorBoardLogger
from torch import nn
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.checkpoints.parts import _is_plain, _plain, part_settings
from mnist_lightning.checkpoints.trust import check_parts, check_saved_parts
from mnist_lightning.errors import CheckpointError, UserInputError, first_line
from mnist_lightning.models.metrics import TrainingMeans, upgrade_training_metric_keys
from mnist_lightning.models.mlp import MLP
from mnist_lightning.models.schedules import RunSchedule
from mnist_lightning.types import AtLeastTwo, UnitShare

Batch = tuple[torch.Tensor, torch.Tensor]


# The parts a user injects; their settings are the run's hyperparameters (see `part_settings`).
PARTS = ("net", "optimizer", "lr_scheduler")


class MNISTClassifier(pl.LightningModule):
    """Trains a net with cross-entropy and an injected optimizer, and logs loss and accuracy per stage.

    Logged (TensorBoard's x-axis is the optimizer step): `train/loss_step` every
    `log_every_n_steps`; per epoch `train/loss`, `train/acc`, `val/loss`, `val/acc`, `val/acc_best`;
    after `test`, `test/loss` and `test/acc`; after `validate`, `validate/loss` and `validate/acc`
    (both at the evaluated checkpoint's step, so a run's curves stay as the fit drew them). The
    learning rate comes from Lightning's `LearningRateMonitor` (the default config).

    Args:
        net: any `nn.Module` from a float batch (N, 1, 28, 28) to logits (N, num_classes); the
            tutorial's `MLP` when left out. Under the CLI a class path, e.g. ``my_nets.SmallCNN``;
            its ``num_classes`` argument is set from the data.
        optimizer: builds the optimizer from parameter groups, e.g. ``torch.optim.SGD`` with its
            init args. Weight decay never applies to biases and normalisation scales (parameters of
            fewer than 2 dimensions), whatever the optimizer: decaying them only fights the normalisation.
        lr_scheduler: a torch scheduler built from the optimizer (e.g. ``torch.optim.lr_scheduler.StepLR``),
            or a `mnist_lightning.models.schedules.RunSchedule` (``OneCycle``, ``Cosine``) that spans the run,
            stepped per optimizer step; none keeps the rate constant (the tutorial's).
        lr_scheduler_interval: when a torch scheduler steps: after every ``epoch`` (Lightning's
            default) or every optimizer ``step``.
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
        label_smoothing, num_classes = float(label_smoothing), int(num_classes)
        if not 0 <= label_smoothing < 1:
            raise UserInputError(f"model.label_smoothing must be in [0, 1); got {label_smoothing!r}.")
        if num_classes < 2:
            raise UserInputError(f"model.num_classes must be >= 2; got {num_classes!r}.")
        if lr_scheduler_interval not in ("epoch", "step"):
            raise UserInputError(f"model.lr_scheduler_interval must be epoch or step; got {lr_scheduler_interval!r}.")
        with warnings.catch_warnings():  # the net is dropped just below when it is an object (Python use)
            warnings.filterwarnings("ignore", message=r".*is an instance of `nn.Module` and is already saved")
            # logger=False: `experiment_hparams` logs what defines the experiment instead.
            self.save_hyperparameters(logger=False)
        # Under LightningCLI the parts arrive as their configs (class path and init args), which the
        # checkpoint keeps, so `load_from_checkpoint` rebuilds them. Objects passed in Python cannot
        # be stored safely: pass them again to `load_from_checkpoint(path, net=...)`.
        self.remove_ignored_hparams([key for key in PARTS if not _is_plain(self.hparams.get(key))])
        self.net = net if net is not None else MLP(num_classes=num_classes)
        self.optimizer_factory: Callable[[Iterable[Any]], torch.optim.Optimizer] = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.schedule_spans_run = isinstance(lr_scheduler, RunSchedule)
        # One metric object per stage. validate_args=False: the argument checks cost more than the
        # update itself on a 64-image batch.
        self.val_acc = MulticlassAccuracy(num_classes=num_classes, average="micro", validate_args=False)
        self.test_acc = self.val_acc.clone()
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        # Training: the epoch's mean loss and accuracy in one object, one update per step (metrics.py says why).
        self.train_metrics = TrainingMeans()
        self.test_count = SumMetric()  # images tested, for the tutorial's "Got N / 10000" line
        self.val_acc_best = MaxMetric()
        # Metric states go into checkpoints, so a run resumed mid-epoch logs the same epoch means,
        # and the best validation accuracy survives a resume.
        for metric in (self.train_metrics, self.val_acc_best):
            metric.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def setup(self, stage: str) -> None:
        """Refuse, before any step, a net whose output is not one logit per class."""
        was_training = self.net.training
        try:
            with torch.no_grad():
                self.net.eval()  # no dropout draws, no batch-norm statistics updated
                probe = torch.zeros(2, 1, 28, 28, device=next(self.net.parameters(), torch.empty(0)).device)
                shape = tuple(self.net(probe).shape)
        finally:
            self.net.train(was_training)
        classes = self.hparams.num_classes
        if shape != (2, classes):
            raise UserInputError(f"model.net maps a batch (2, 1, 28, 28) to shape {shape}; it must return logits "
                                 f"(2, {classes}), one per class of the data. Size its last layer with num_classes.")

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
        # "loss" is what Lightning optimises (divided by accumulate_grad_batches in `outputs`);
        # "step_loss" reaches on_train_batch_end as computed, for the step curve.
        return {"loss": loss, "step_loss": loss.detach()}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # The step curve is logged only on the steps whose value Lightning writes to the loggers:
        # `log_every_n_steps` thins what is written, not the cost of each `self.log` call, which is
        # as large as the metrics' (docs/speed.md). Same values at the same steps (tests/test_model.py).
        step_loss = outputs.get("step_loss") if isinstance(outputs, Mapping) else None
        if step_loss is not None and self.step_values_reach_loggers():
            self.log("train/loss_step", step_loss, on_step=True, on_epoch=False, batch_size=1)

    def step_values_reach_loggers(self) -> bool:
        """Whether values logged now, at the end of a training batch, are written to the loggers.

        Lightning's rule (`log_every_n_steps`, public Trainer flags only): after the optimizer step
        that makes `global_step` a multiple of `log_every_n_steps`, when the run is stopping, and
        on every step of a `fast_dev_run`. Inside an accumulation window nothing is written, and a
        value logged there is overwritten by the window's last batch before it could be.
        """
        trainer = self.trainer
        if not self.loggers:
            return False
        if trainer.fast_dev_run:
            return True
        every = trainer.log_every_n_steps
        return every > 0 and (trainer.global_step % every == 0 or trainer.should_stop)

    def on_train_epoch_end(self) -> None:
        # Computed, logged and reset here rather than logged as metric objects in the step: Lightning
        # resets logged objects only after the epoch-end checkpoint, which then carries a finished
        # epoch's counts into the next epoch of a resumed run (tests/test_resume.py shows it).
        # batch_size=1: single epoch-level values (the fast subclass's training_step gives Lightning no batch).
        loss, accuracy = self.train_metrics.compute()
        self.log("train/loss", loss, batch_size=1)
        self.log("train/acc", accuracy, prog_bar=True, batch_size=1)
        self.train_metrics.reset()

    def on_train_start(self) -> None:
        # A sanity check or an earlier `validate` must not count as the best epoch (resumed runs keep theirs).
        if self.trainer.ckpt_path is None:
            self.val_acc_best.reset()

    # ------------------------------------------------------------------------------ evaluation
    # A `validate` or `test` of a checkpoint usually logs into the checkpoint's own run. Lightning
    # logs an evaluation outside `fit` at step 0 (the fit loop is not restored), with an `epoch`
    # scalar, and TensorBoard keeps, per tag, no point at or after a later event's step: the run's
    # `epoch` and `val/*` curves would collapse to that one point. So outside `fit` the results are
    # logged at the checkpoint's own step (Lightning takes a logged `step` as the x-axis, and then
    # adds no `epoch`), under tags the fit never writes: `validate/*` and `test/*`.
    _checkpoint_step = 0  # the global step of the checkpoint last loaded (on_load_checkpoint)

    def _fitting(self) -> bool:
        return self.trainer.state.fn == "fit"

    def evaluation_step(self) -> int:
        """Where an evaluation outside `fit` is logged: the step of the checkpoint it evaluates
        (`--ckpt_path`), else the trainer's (e.g. `trainer.test(model)` right after `trainer.fit`)."""
        return self._checkpoint_step if self.trainer.ckpt_path else self.trainer.global_step

    def validation_step(self, batch: Batch, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, preds, y = self.model_step(batch)
        self.val_loss.update(loss, weight=len(y))
        self.val_acc.update(preds, y)
        stage = "val" if self._fitting() else "validate"
        self.log(f"{stage}/loss", self.val_loss, on_step=False, on_epoch=True)
        self.log(f"{stage}/acc", self.val_acc, on_step=False, on_epoch=True, prog_bar=True)
        return {"preds": preds}  # for callbacks (mnist_lightning.figures), so they need no second forward pass

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:  # a sanity check is not an epoch and must not set the best
            return
        if not self._fitting():  # `validate`: one checkpoint's score, at its step; the best over epochs is the fit's
            self.log("step", float(self.evaluation_step()))
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
        self.log("step", float(self.evaluation_step()))
        self._log_hparams_with({"hp/test_acc": acc})

    def on_fit_start(self) -> None:
        self._log_hparams_with({})

    def on_fit_end(self) -> None:
        started_at = self._checkpoint_step if self.trainer.ckpt_path else 0
        if self.trainer.global_step == started_at:  # nothing trained (e.g. a finished run resumed): nothing new
            return
        best = self.val_acc_best.max_value  # state, not compute(): also right after a resume
        if torch.isfinite(best):
            self._log_hparams_with({"hp/val_acc_best": float(best)})

    def experiment_hparams(self) -> dict[str, Any]:
        """What defines this experiment, for TensorBoard's HPARAMS tab: the model's parts with their
        class paths and init args, its other settings, the data settings a checkpoint fixes, the
        seed, epochs, precision and devices; nothing internal, booleans as words."""
        trainer = self.trainer
        params: dict[str, Any] = {"model.class": type(self).__name__}
        params.update({f"model.{k}": v for k, v in part_settings(self.hparams).items()})
        for part, given in (("net", self.net), ("optimizer", self.optimizer_factory),
                            ("lr_scheduler", self.lr_scheduler_factory)):
            params.setdefault(f"model.{part}", _describe(given))  # passed in Python: named, not configurable
        datamodule = trainer.datamodule
        settings = getattr(datamodule, "fixed_settings", None)
        if callable(settings):
            params.update({f"data.{k}": v for k, v in settings().items()})
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
    def parameter_groups(self) -> list[dict[str, Any]] | Iterable[nn.Parameter]:
        """The parameters for the optimizer: weight decay on weight matrices and kernels only.

        Decaying biases and batch-norm scales only fights the normalisation (the usual practice, e.g.
        in timm and nanoGPT); the rule reads each parameter's shape, not the net's layout. An
        optimizer that does not decay gets one group, as torch's own default does (and one
        learning-rate curve in TensorBoard).
        """
        probe = self.optimizer_factory([nn.Parameter(torch.zeros(1))])  # asks the optimizer its defaults
        lr = probe.defaults.get("lr")
        if isinstance(lr, int | float) and not lr > 0:  # torch takes 0 and then trains nothing, silently
            raise UserInputError(f"model.optimizer.init_args.lr must be > 0; got {lr!r}.")
        if not probe.defaults.get("weight_decay"):
            return self.parameters()
        decayed = [p for p in self.parameters() if p.ndim >= 2]
        undecayed = [p for p in self.parameters() if p.ndim < 2]
        groups = [{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}]
        return [group for group in groups if group["params"]]

    def configure_optimizers(self) -> Any:
        with _refusal_named("model.optimizer", self.optimizer_factory):
            optimizer = self.optimizer_factory(self.parameter_groups())
        make_schedule = self.lr_scheduler_factory
        if make_schedule is None:
            return optimizer
        with _refusal_named("model.lr_scheduler", make_schedule):
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
        """Lightning's `load_from_checkpoint`, after refusing a checkpoint (or hparams file) whose saved parts
        name anything but classes of the kind each slot takes (`saved_parts.py` says why). Always
        weights-only: `weights_only` is accepted for Lightning's signature and cannot turn that off."""
        from mnist_lightning.checkpoints.files import load_checkpoint_file  # resume.py builds on this module

        if isinstance(checkpoint_path, str | os.PathLike):
            checkpoint = load_checkpoint_file(checkpoint_path)
        else:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        check_saved_parts(checkpoint, cls)
        if hparams_file is not None:
            saved = yaml.safe_load(Path(hparams_file).read_text(encoding="utf-8")) or {}
            check_parts(saved if isinstance(saved, Mapping) else {}, cls, "model")
        buffer = io.BytesIO()  # the checked copy is the one loaded: the file is not read a second time
        torch.save(checkpoint, buffer)
        buffer.seek(0)
        return super().load_from_checkpoint(buffer, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=True, **kwargs)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Lightning stores no RNG state; dropout draws from the global RNG, so an exact resume needs it.
        checkpoint["rng_state"] = {"torch": torch.get_rng_state()}
        if "PL_GLOBAL_SEED" in os.environ:  # the data order derives from it: a resume must keep it
            checkpoint["seed"] = int(os.environ["PL_GLOBAL_SEED"])
        # `_trainer`: the public `trainer` property raises where there is none (a bare `torch.save`-style call).
        if self._trainer is not None:  # a RunSchedule's length derives from it (see checkpoint_settings.py)
            checkpoint["max_epochs"] = self.trainer.max_epochs
        checkpoint["schedule_spans_run"] = self.schedule_spans_run
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._check_architecture(checkpoint)
        upgrade_training_metric_keys(checkpoint.get("state_dict", {}))  # runs saved before TrainingMeans
        self._checkpoint_step = int(checkpoint.get("global_step") or 0)  # where an evaluation of it is logged
        # `load_from_checkpoint` rebuilt the parts from their saved configs but passed them in as
        # objects, which __init__ does not keep: keep the configs, so a checkpoint saved again still has them.
        saved = checkpoint.get("hyper_parameters") or {}
        for key in PARTS:
            config = _plain(saved.get(key))  # jsonargparse may have retyped its numbers in place
            if key not in self.hparams and key in saved and _is_plain(config):
                self.hparams[key] = config
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
            saved = {k: v for k, v in part_settings(checkpoint.get("hyper_parameters") or {}).items() if k.startswith("net")}
            described = ", ".join(f"model.{k}={v!r}" for k, v in saved.items()) or "not recorded"
            raise CheckpointError(
                f"the checkpoint's net ({described}) does not match this model's net ({_describe(self.net)}): "
                + "; ".join(mismatched + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected])
            )


@contextmanager
def _refusal_named(key: str, part: Any) -> Iterator[None]:
    """An optimizer or scheduler that refuses its arguments (torch checks them as it is built) is the
    user's setting, not a bug: one line naming the setting."""
    try:
        yield
    except UserInputError:
        raise
    except (ValueError, TypeError) as err:
        raise UserInputError(f"{key} ({_describe(part)}) refused its arguments: {first_line(err)}") from err


def _describe(part: Any) -> str:
    """A part passed in Python, by its class (or function) path."""
    if part is None:
        return "none"
    target = part if isinstance(part, type) or callable(part) and not isinstance(part, nn.Module) else type(part)
    if isinstance(target, partial):  # yours, or LightningCLI's (jsonargparse passes the class as an argument)
        target = next((a for a in target.args if isinstance(a, type)), target.func)
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', type(target).__name__)}".lstrip(".")
