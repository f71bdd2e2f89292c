"""FastMNISTClassifier (the opt-in speed path): the same updates as the idiomatic MNISTClassifier, bit for
bit, for any net, optimizer and per-step schedule, and clear refusals of what it cannot do.
(Under 2-process DDP: tests/test_ddp.py.)"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli
from torch import nn

from mnist_lightning import MLP, MNISTClassifier, MNISTDataModule
from mnist_lightning.checkpoints.files import SafeCheckpointIO
from mnist_lightning.errors import UserInputError
from mnist_lightning.models.fast import FastMNISTClassifier
from mnist_lightning.models.schedules import Cosine, OneCycle

FAST_CONFIG = str(PROJECT_ROOT / "configs" / "fast.yaml")


class SmallCNN(nn.Module):
    """Not the MLP: convolutions, BatchNorm2d running statistics (buffers) and dropout (the global RNG)."""

    def __init__(self, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(4), nn.Flatten(), nn.Dropout(0.2))
        self.head = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# The parts of each comparison, built after seeding (the net's initial weights come from the RNG).
SETUPS: dict[str, Callable[[], dict[str, Any]]] = {
    "mlp_adam_onecycle": lambda: dict(net=MLP(dropout=0.2), optimizer=partial(torch.optim.Adam, lr=3e-3),
                                      lr_scheduler=OneCycle()),
    "cnn_sgd_cosine": lambda: dict(net=SmallCNN(), lr_scheduler=Cosine(eta_min=1e-3),
                                   optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9, weight_decay=1e-3)),
    "mlp_sgd_steplr_per_step": lambda: dict(net=MLP([32], batch_norm=True), lr_scheduler_interval="step",
                                            optimizer=partial(torch.optim.SGD, lr=0.1),
                                            lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=5,
                                                                 gamma=0.7)),
}


def _fit(data_dir: Path, tmp_path: Path, steps_per_call: int | None, setup: str = "mlp_adam_onecycle",
         **trainer_kwargs) -> tuple[dict, pl.Trainer]:
    """Fit the idiomatic class (steps_per_call None) or the fast one, same seed and parts."""
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=100, batch_size=32)
    parts = SETUPS[setup]()
    model = MNISTClassifier(**parts) if steps_per_call is None else FastMNISTClassifier(steps_per_call, **parts)
    trainer = pl.Trainer(default_root_dir=tmp_path / f"k{steps_per_call}", accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         plugins=[SafeCheckpointIO()], **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(model, dm)
    return {k: v.clone() for k, v in model.state_dict().items()}, trainer


@pytest.mark.parametrize(("setup", "calls"), [
    # 500 training images / 32 = 16 batches an epoch: calls of 3 leave a short last call (16 = 5 x 3 + 1).
    ("mlp_adam_onecycle", (1, 3, 10)),
    ("cnn_sgd_cosine", (3,)),  # an injected non-MLP net with buffers, SGD with momentum and weight decay
    ("mlp_sgd_steplr_per_step", (3,)),  # a torch scheduler stepped per optimizer step
])
def test_the_fast_class_ends_with_the_idiomatic_class_weights_bit_for_bit(setup, calls, shared_tiny_data, tmp_path):
    idiomatic, trainer_idiomatic = _fit(shared_tiny_data, tmp_path, None, setup)
    for k in calls:
        fast, trainer = _fit(shared_tiny_data, tmp_path, k, setup)
        assert trainer.global_step == trainer_idiomatic.global_step == 2 * 16  # optimizer steps, whatever k
        assert fast.keys() == idiomatic.keys()
        for name, value in idiomatic.items():
            assert torch.equal(value, fast[name]), (k, name)
        for metric in ("train/acc", "val/acc", "val/loss"):
            assert trainer.callback_metrics[metric] == trainer_idiomatic.callback_metrics[metric], (k, metric)
        assert trainer.callback_metrics["train/loss"] == pytest.approx(
            float(trainer_idiomatic.callback_metrics["train/loss"]))
        lr, reference_lr = (t.optimizers[0].param_groups[0]["lr"] for t in (trainer, trainer_idiomatic))
        assert lr == reference_lr, (k, "the schedule took another number of steps")


def test_limits_and_max_steps_count_batches_not_calls(shared_tiny_data, tmp_path):
    _, limited = _fit(shared_tiny_data, tmp_path, 10, limit_train_batches=3)
    assert limited.global_step == 2 * 3
    _, stopped = _fit(shared_tiny_data, tmp_path, 10, max_steps=7)
    assert stopped.global_step == 7  # not rounded up to a whole call


def test_validation_inside_an_epoch_is_refused_naming_the_idiomatic_class(shared_tiny_data, tmp_path):
    with pytest.raises(UserInputError, match="mnist_lightning.models.MNISTClassifier"):
        _fit(shared_tiny_data, tmp_path, 4, val_check_interval=0.5)


def test_a_scheduler_stepped_per_epoch_is_refused_naming_the_idiomatic_class(shared_tiny_data, tmp_path):
    """Per-epoch stepping would happen once per call's epoch bookkeeping, not where the idiomatic class does it."""
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=100, batch_size=32)
    model = FastMNISTClassifier(4, lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1))
    trainer = pl.Trainer(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, max_epochs=1)
    with pytest.raises(UserInputError, match="stepped per epoch.*mnist_lightning.models.MNISTClassifier"):
        trainer.fit(model, dm)
    assert trainer.global_step == 0  # refused before any step


@pytest.mark.parametrize("flag", [("--trainer.gradient_clip_val", "1.0"), ("--trainer.accumulate_grad_batches", "2")])
def test_flags_of_automatic_optimisation_are_refused_naming_the_idiomatic_class(flag, shared_tiny_data, tmp_path):
    result = run_cli("fit", "--config", FAST_CONFIG, "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, *flag,
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mnist_lightning.models.MNISTClassifier" in result.stderr and flag[0].removeprefix("--") in result.stderr


def test_steps_per_call_must_be_a_positive_integer(tmp_path):
    """Its type (PositiveInt) bounds it: the CLI refuses 0 and -2 in one line naming the setting."""
    for bad in ("0", "-2"):
        result = run_cli("fit", "--config", FAST_CONFIG, "--model.init_args.steps_per_call", bad, "--print_config",
                         cwd=tmp_path)
        assert result.returncode == 2 and "steps_per_call" in result.stderr, result.stderr[-2000:]
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr[-2000:]


def test_the_fast_preset_selects_the_fast_class_and_prints_no_experimental_warning(shared_tiny_data, tmp_path):
    result = run_cli("fit", "--config", FAST_CONFIG, "--data.data_dir", str(shared_tiny_data), *TINY_ARGS,
                     "--trainer.max_epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "mnist_lightning.models.FastMNISTClassifier" in config and "steps_per_call: 50" in config
    assert "dataloader_iter" not in result.stderr
