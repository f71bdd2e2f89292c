"""The final refit (`fit --data.val_size 0`): every training image trained on, no validation, last.ckpt is the
model, callbacks that watch validation step aside saying so, and the printed test command works when pasted.
(`seeds` with the refit: tests/test_experiments.py.)"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import torch
from conftest import PROJECT_ROOT, TINY_ARGS, image_keys, probe_args, read_probes, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

EARLY_STOPPING = str(PROJECT_ROOT / "configs" / "early_stopping.yaml")
REFIT = str(PROJECT_ROOT / "configs" / "refit.yaml")


def test_a_refit_trains_on_every_image_runs_no_validation_and_keeps_last_ckpt(shared_tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    """With ModelCheckpoint and EarlyStopping on val/acc (configs/early_stopping.yaml): both step aside in one
    line instead of EarlyStopping's crash; the model is last.ckpt, and the command fit prints to test it works
    pasted into a shell."""
    args = [a for a in TINY_ARGS if a not in ("--data.val_size", "100")]
    probes = tmp_path / "probes"
    fit = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *args, "--config", EARLY_STOPPING, "--config", REFIT,
                  "--trainer.max_epochs", "2", "--torch_threads", "1", *probe_args(probes), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert ("data.val_size 0: no validation runs, so ModelCheckpoint(monitor='val/acc'), "
            "EarlyStopping(monitor='val/acc') "
            "step aside; the model is the last epoch's checkpoint, last.ckpt.") in fit.stdout

    (seen,) = read_probes(probes, "fit", 1)
    every_image = image_keys(shared_tiny_data, val_size=0)["train"]
    assert len(every_image) == 600
    for epoch in (0, 1):  # all 600 training images, the would-be validation ones included, once an epoch
        assert sorted(seen["seen"][f"train/{epoch}"]) == sorted(every_image), epoch
    assert not any(key.startswith("val") for key in seen["seen"]), "a validation ran"
    run_dir = tmp_path / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert "train/acc" in events.Tags()["scalars"]
    assert not [t for t in events.Tags()["scalars"] if t.startswith("val/")]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.ckpt"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # the last epoch's

    last = Path("lightning_logs") / "version_0" / "checkpoints" / "last.ckpt"
    assert f"No validation ran (data.val_size 0): the model is the last checkpoint, {last}" in fit.stdout
    (command,) = re.findall(r"^Test it with: (.+)$", fit.stdout, re.M)
    assert shlex.split(command)[3:6] == ["test", "--ckpt_path", str(last)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    pasted = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert pasted.returncode == 0, pasted.stderr[-3000:]
    assert re.search(r"^Got \d+ / 200 with accuracy", pasted.stdout, re.M), pasted.stdout[-1000:]


def test_validate_on_a_refit_checkpoint_says_there_is_nothing_to_validate(shared_tiny_data: Path,
                                                                          tmp_path: Path) -> None:
    args = [a for a in TINY_ARGS if a not in ("--data.val_size", "100")]
    fit = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *args, "--data.val_size", "0",
                  "--trainer.max_epochs", "1", "--torch_threads", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    result = run_cli("validate", "--ckpt_path", str(last), "--data.data_dir", str(shared_tiny_data), "--data.verify",
                     "false", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert result.returncode == 2
    assert "data.val_size is 0: this run holds out no validation images" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_schedule_that_steps_on_validation_is_refused_before_a_refit_trains(shared_tiny_data: Path,
                                                                               tmp_path: Path) -> None:
    """ReduceLROnPlateau watches val/loss, which a refit never logs: refused before the first step (Lightning's
    own error comes only after a whole epoch), and no run folder is left."""
    args = [a for a in TINY_ARGS if a not in ("--data.val_size", "100")]
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *args, "--config", REFIT,
                     "--model.lr_scheduler", "torch.optim.lr_scheduler.ReduceLROnPlateau", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.lr_scheduler ReduceLROnPlateau steps on val/loss"), last
    assert "data.val_size 0 runs no validation" in last
    assert not list(tmp_path.glob("lightning_logs/*/checkpoints/*.ckpt"))
