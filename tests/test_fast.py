"""FastMNISTClassifier (the opt-in speed path): the same updates as the idiomatic MNISTClassifier, bit for
bit, and clear refusals of what it cannot do. (Under 2-process DDP: tests/test_ddp.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli

from mnist_lightning import MNISTClassifier, MNISTDataModule
from mnist_lightning.errors import UserInputError
from mnist_lightning.fast import FastMNISTClassifier
from mnist_lightning.resume import SafeCheckpointIO

FAST_CONFIG = str(PROJECT_ROOT / "configs" / "fast.yaml")


def _fit(tiny_data: Path, tmp_path: Path, steps_per_call: int | None, **trainer_kwargs) -> tuple[dict, pl.Trainer]:
    """Fit the idiomatic class (steps_per_call None) or the fast one, same seed, dropout and one-cycle schedule."""
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100, batch_size=32)
    hparams = dict(dropout=0.2, lr_schedule="onecycle", lr=3e-3)
    model = MNISTClassifier(**hparams) if steps_per_call is None else FastMNISTClassifier(steps_per_call, **hparams)
    trainer = pl.Trainer(default_root_dir=tmp_path / f"k{steps_per_call}", accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         plugins=[SafeCheckpointIO()], **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(model, dm)
    return {k: v.clone() for k, v in model.state_dict().items()}, trainer


def test_the_fast_class_ends_with_the_idiomatic_class_weights_bit_for_bit(tiny_data, tmp_path):
    # 500 training images / 32 = 16 batches an epoch: calls of 3 leave a short last call (16 = 5 x 3 + 1).
    idiomatic, trainer_idiomatic = _fit(tiny_data, tmp_path, None)
    for k in (1, 3, 10):
        fast, trainer = _fit(tiny_data, tmp_path, k)
        assert trainer.global_step == trainer_idiomatic.global_step == 2 * 16  # optimizer steps, whatever k
        assert fast.keys() == idiomatic.keys()
        for name, value in idiomatic.items():
            assert torch.equal(value, fast[name]), (k, name)
        for metric in ("train/acc", "val/acc", "val/loss"):
            assert trainer.callback_metrics[metric] == trainer_idiomatic.callback_metrics[metric], (k, metric)
        assert trainer.callback_metrics["train/loss"] == pytest.approx(float(trainer_idiomatic.callback_metrics["train/loss"]))


def test_limits_and_max_steps_count_batches_not_calls(tiny_data, tmp_path):
    _, limited = _fit(tiny_data, tmp_path, 10, limit_train_batches=3)
    assert limited.global_step == 2 * 3
    _, stopped = _fit(tiny_data, tmp_path, 10, max_steps=7)
    assert stopped.global_step == 7  # not rounded up to a whole call


def test_validation_inside_an_epoch_is_refused_naming_the_idiomatic_class(tiny_data, tmp_path):
    with pytest.raises(UserInputError, match="mnist_lightning.model.MNISTClassifier"):
        _fit(tiny_data, tmp_path, 4, val_check_interval=0.5)


@pytest.mark.parametrize("flag", [("--trainer.gradient_clip_val", "1.0"), ("--trainer.accumulate_grad_batches", "2")])
def test_flags_of_automatic_optimisation_are_refused_naming_the_idiomatic_class(flag, tiny_data, tmp_path):
    result = run_cli("fit", "--config", FAST_CONFIG, "--data.data_dir", str(tiny_data), *TINY_ARGS, *flag, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "mnist_lightning.model.MNISTClassifier" in result.stderr and flag[0].removeprefix("--") in result.stderr


def test_steps_per_call_must_be_a_positive_integer():
    for bad in (0, -2):
        with pytest.raises(UserInputError, match="model.steps_per_call"):
            FastMNISTClassifier(steps_per_call=bad)


def test_the_fast_preset_selects_the_fast_class_and_prints_no_experimental_warning(tiny_data, tmp_path):
    result = run_cli("fit", "--config", FAST_CONFIG, "--data.data_dir", str(tiny_data), *TINY_ARGS,
                     "--trainer.max_epochs", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = (tmp_path / "lightning_logs" / "version_0" / "config.yaml").read_text()
    assert "mnist_lightning.fast.FastMNISTClassifier" in config and "steps_per_call: 50" in config
    assert "dataloader_iter" not in result.stderr
