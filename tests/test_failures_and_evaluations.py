"""Evaluation never erases a run's curves, a run without a logger works,
every printed command works when pasted, and what a user can fix ends in one line, leaving no empty run folder.

Through the real entry point (`run_cli`, in this process) except where a pasted command is the subject
(a real shell and process).
"""

from __future__ import annotations

import builtins
import csv
import errno
import io
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, TESTS_DIR, TINY_ARGS, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def _points(run_dir: Path) -> dict[str, list[int]]:
    """The steps of every scalar and image series of a run, in the order TensorBoard's loader reads them."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    series = {tag: [e.step for e in acc.Scalars(tag)] for tag in tags["scalars"]}
    series.update({tag: [e.step for e in acc.Images(tag)] for tag in tags["images"]})
    return series


def _shown(steps: list[int]) -> list[int]:
    """What TensorBoard's data server shows of a series: a point at step s drops the earlier points at steps >= s
    (tensorboard/data/server/reservoir.rs, "preemption")."""
    kept: list[int] = []
    for step in steps:
        kept = [k for k in kept if k < step] + [step]
    return kept


def _error_line(stderr: str) -> str:
    """The `error: ...` line, asserting it is the only line that says anything went wrong (no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def _fit(workdir: Path, data_dir: Path, *args: str, epochs: int = 1):
    return run_cli("fit", "--data.data_dir", str(data_dir), *TINY_ARGS, "--trainer.max_epochs", str(epochs), *args,
                   cwd=workdir)


def _shell(command: str, cwd: Path) -> subprocess.CompletedProcess:
    """A printed command pasted into bash as it is."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(TESTS_DIR)]), "FAULT_INJECTION": "0"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _printed(output: str, prefix: str) -> str:
    return next(line for line in output.splitlines() if prefix in line).split(prefix, 1)[1]


# ------------------------------------------------------------------------------ evaluation keeps the curves
def test_validate_and_test_leave_every_curve_of_the_run_as_it_was(trained_run_copy):
    """`validate` and `test` log into the checkpoint's run: at the checkpoint's step, under tags the fit never
    writes; logged at step 0 with an `epoch` scalar, TensorBoard would show `epoch`, `val/acc`, `val/loss`,
    `val/acc_best` and the validation figures as one point."""
    run_dir, best = trained_run_copy.run_dir, trained_run_copy.best
    step = torch.load(best, weights_only=True)["global_step"]
    before = _points(run_dir)
    assert "epoch" in before and "val/acc" in before and "val/predictions" in before
    evaluate = ("--ckpt_path", str(best), "--data.data_dir", str(trained_run_copy.data_dir), *TINY_ARGS)
    for subcommand in ("validate", "test"):
        result = run_cli(subcommand, *evaluate, cwd=trained_run_copy.workdir)
        assert result.returncode == 0, result.stderr
        rows = [line.replace("│", " ").split() for line in result.stdout.splitlines()]  # any table's borders
        names = [cells[0] for cells in rows if cells]
        assert f"{subcommand}/acc" in names and "step" not in names  # the results table: `step` is no metric
        after = _points(run_dir)
        for tag, steps in before.items():  # loaded as they were, and shown as they were
            assert after[tag] == steps, (subcommand, tag)
            assert _shown(after[tag]) == _shown(steps), (subcommand, tag)
    for tag in ("validate/acc", "validate/loss", "validate/predictions", "validate/confusion_matrix",
                "test/acc", "test/loss"):
        assert after[tag] == [step], tag  # one point each, at the evaluated checkpoint's step
    assert after["hp/test_acc"] == [0]  # the HPARAMS tab's metric (a tag of its own)


# ------------------------------------------------------------------------------ printed commands, pasted
@pytest.mark.slow  # two real processes: the pasted commands are the subject
def test_the_resume_line_and_the_commands_after_it_work_pasted_into_a_shell_with_an_awkward_path(shared_tiny_data,
                                                                                                  tmp_path):
    """Ctrl+C's "Resume with:" line, then the "Test it with:" line the resumed fit prints, each pasted into bash,
    with a log folder whose name has a space, a quote and a non-ASCII letter."""
    logs = "my lo'gs é"
    interrupted = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "2",
                          "--trainer.logger.init_args.save_dir", logs,
                          "--trainer.callbacks+=fault_injection.SignalAt", "--trainer.callbacks.epoch", "1",
                          "--trainer.callbacks.batch", "2", "--trainer.callbacks.signal_name", "SIGINT",
                          cwd=tmp_path, env={"PYTHONPATH": str(TESTS_DIR), "FAULT_INJECTION": "1"})
    assert interrupted.returncode == 130, interrupted.stderr
    resume = _printed(interrupted.stderr, "Resume with: ")
    assert shlex.split(resume)[3:] == ["fit", "--config", f"{logs}/version_0/config.yaml", "--ckpt_path", "last"]
    resumed = _shell(resume, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (tmp_path / logs).iterdir()) == ["version_0"]  # into the same run
    tested = _shell(_printed(resumed.stdout, "Test it with: "), tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert re.search(r"Got \d+ / 200 with accuracy", tested.stdout)


# ------------------------------------------------------------------------------ no logger
def test_fit_without_a_logger_works_with_the_default_config_in_a_run_folder_of_its_own(shared_tiny_data, tmp_path):
    """`--trainer.logger false`: LearningRateMonitor steps aside (said once) instead of stopping the run; the
    checkpoints and configs go into lightning_logs/version_N, not ./checkpoints and ./config.yaml; the resume,
    the fresh start it advises and the test command it prints all work."""
    few = ("--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1")
    with pytest.warns(UserWarning, match="LearningRateMonitor needs a logger") as said:
        fit = _fit(tmp_path, shared_tiny_data, "--trainer.logger", "false", *few)
    assert fit.returncode == 0, fit.stderr
    assert len([w for w in said if "needs a logger" in str(w.message)]) == 1  # once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs"]  # no ./config.yaml, no ./checkpoints
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert not list(run_dir.glob("events.out.*"))  # no logger: no event file

    again = run_cli("fit", "--config", str(run_dir / "config.yaml"), cwd=tmp_path)  # a re-run into the same folder
    assert again.returncode == 2 and "--trainer.logger.init_args.version" not in again.stderr
    advice = _error_line(again.stderr).split("by adding ", 1)[1].rstrip(".")
    fresh = run_cli("fit", "--config", str(run_dir / "config.yaml"), *shlex.split(advice), cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr
    assert (tmp_path / "lightning_logs" / "version_1" / "checkpoints" / "last.ckpt").is_file()

    resumed = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                      "--trainer.max_epochs", "2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # the same run, on
    test = _printed(resumed.stdout, "Test it with: ")
    tested = run_cli(*shlex.split(test)[3:], cwd=tmp_path)
    assert tested.returncode == 0, tested.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lightning_logs"]


# ------------------------------------------------------------------------------ one line, not a traceback
@pytest.mark.parametrize("file", ["config.yaml", "events.out.tfevents"])
def test_a_full_disk_before_the_first_checkpoint_is_one_line_and_leaves_no_run_folder(file, shared_tiny_data,
                                                                                      tmp_path, monkeypatch):
    """The disk fills while the run's config or its TensorBoard event file is written: as the OS does, the
    file is created, then the write fails (ENOSPC)."""
    real_open = builtins.open

    def disk_full(name, mode="r", *args, **kwargs):
        if any(m in mode for m in "wa") and Path(str(name)).name.startswith(file):
            real_open(name, mode, *args, **kwargs).close()  # the 0-byte file a full disk leaves
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(name, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", disk_full)
    monkeypatch.setattr(io, "open", disk_full)  # TensorBoard's writer opens through io.open
    result = _fit(tmp_path, shared_tiny_data)
    monkeypatch.undo()
    assert result.returncode == 2, result.stderr
    assert "the disk is full" in _error_line(result.stderr) and "Exception in thread" not in result.stderr
    assert list((tmp_path / "lightning_logs").iterdir()) == []  # no version_0 with a 0-byte file


@pytest.mark.parametrize("devices", ["-1", "abc"])
def test_devices_a_cpu_cannot_have_are_one_line_and_leave_no_run_folder(devices, shared_tiny_data, tmp_path):
    result = _fit(tmp_path, shared_tiny_data, f"--trainer.devices={devices}")
    assert result.returncode == 2
    assert "devices" in _error_line(result.stderr)
    assert list((tmp_path / "lightning_logs").iterdir()) == []  # 7: refused before training, no empty version_N


def test_an_early_stopping_monitor_never_logged_is_one_line_and_the_epoch_is_saved(shared_tiny_data, tmp_path):
    """Not EarlyStopping's RuntimeError with a traceback after the first epoch: one line, and that epoch's last.ckpt
    is kept."""
    result = _fit(tmp_path, shared_tiny_data, "--trainer.callbacks+=EarlyStopping",
                  "--trainer.callbacks.monitor", "val/accuracy", epochs=2)
    assert result.returncode == 2, result.stderr
    line = _error_line(result.stderr)
    assert "val/accuracy" in line and "val/acc," in line  # names the metric asked for and those logged
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == 0  # the finished epoch, saved before stopping


# ------------------------------------------------------------------------------ smaller ones
def test_an_optimizer_refused_before_training_leaves_no_empty_run_folder(shared_tiny_data, tmp_path):
    result = _fit(tmp_path, shared_tiny_data, "--model.optimizer.init_args.lr", "0")
    assert result.returncode == 2 and "lr" in _error_line(result.stderr)
    assert list((tmp_path / "lightning_logs").iterdir()) == []


@pytest.mark.parametrize("option, why", [("--trainer.max_epochs=0", "max_epochs is 0"),
                                         ("--trainer.limit_train_batches=0", "no training batches")])
def test_a_fit_that_trains_nothing_says_why(option, why, shared_tiny_data, tmp_path):
    """Exit 0 (each is a legal request, e.g. limit_train_batches 0 to validate only), with one line saying so."""
    result = _fit(tmp_path, shared_tiny_data, option)
    assert result.returncode == 0, result.stderr
    assert f"nothing trained: {'--trainer.' if 'max' in why else ''}" in result.stderr and why in result.stderr


def test_a_resumed_finished_run_says_so_and_logs_no_second_best_value(trained_run_copy):
    run_dir = trained_run_copy.run_dir
    before = _points(run_dir)["hp/val_acc_best"]
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                     cwd=trained_run_copy.workdir)
    assert result.returncode == 0, result.stderr
    assert _points(run_dir)["hp/val_acc_best"] == before  # not another point at step 0
    assert "nothing trained: the checkpoint has already trained 2 epochs" in result.stderr


def _csv_rows(run_dir: Path) -> list[dict[str, str]]:
    """The rows of a run's metrics.csv, each without its empty columns."""
    with open(run_dir / "metrics.csv", newline="") as file:
        return [{k: v for k, v in row.items() if v} for row in csv.DictReader(file)]


def test_an_evaluation_of_a_csv_run_adds_rows_to_its_metrics_csv(shared_tiny_data, tmp_path):
    """`test` with the default config and `validate --trainer.logger CSVLogger` on a CSV run's checkpoint log
    with the run's own logger into its folder, after the fit's rows: no TensorBoard event file in a CSV run, no new
    version_1, and the run's metrics.csv is not deleted (as Lightning's CSVLogger would, pointed at the run)."""
    fit = _fit(tmp_path, shared_tiny_data, "--trainer.logger", "CSVLogger", "--trainer.limit_train_batches", "2")
    assert fit.returncode == 0, fit.stderr
    run_dir = tmp_path / "lightning_logs" / "version_0"
    fitted = _csv_rows(run_dir)
    assert any("val/acc" in row for row in fitted)
    last = str(run_dir / "checkpoints" / "last.ckpt")
    evaluate = ("--ckpt_path", last, "--data.data_dir", str(shared_tiny_data), *TINY_ARGS)
    for subcommand, *logger in (("test",), ("validate", "--trainer.logger", "CSVLogger")):
        result = run_cli(subcommand, *evaluate, *logger, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    rows = _csv_rows(run_dir)
    assert rows[:len(fitted)] == fitted  # the fit's rows, as they were
    assert [row["step"] for row in rows if "test/acc" in row or "validate/acc" in row] == ["2", "2"]  # then each
    assert not list(run_dir.glob("events.out.*"))
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]


def test_a_resumed_csv_run_keeps_the_rows_of_its_earlier_epochs(shared_tiny_data, tmp_path):
    """Lightning's CSVLogger would delete the metrics.csv of the folder it reopens; the run's config records its
    version, so `--ckpt_path last` finds the run to resume."""
    fit = _fit(tmp_path, shared_tiny_data, "--trainer.logger", "CSVLogger", "--trainer.limit_train_batches", "2",
               epochs=2)
    assert fit.returncode == 0, fit.stderr
    run_dir = tmp_path / "lightning_logs" / "version_0"
    fitted = _csv_rows(run_dir)
    resumed = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                      "--trainer.max_epochs", "3", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    rows = _csv_rows(run_dir)
    assert rows[:len(fitted)] == fitted
    assert [row["epoch"] for row in rows if "val/acc" in row] == ["0", "1", "2"]
    assert resumed.stderr.count("Logging with mnist_lightning.loggers.AppendingCSVLogger, which adds to") == 1
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("metrics")) == ["metrics.csv"]


def test_a_mistyped_data_dir_is_left_as_it_was(tmp_path, monkeypatch):
    """The download fails (offline here, as on most clusters); the folders the downloader made go with it."""
    import torchvision.datasets.mnist as tv_mnist

    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(tv_mnist, "download_and_extract_archive", offline)
    result = run_cli("fit", "--data.data_dir", "tyop/mnist", *TINY_ARGS, cwd=tmp_path)
    assert result.returncode == 2
    assert not (tmp_path / "tyop").exists()  # no tyop/mnist/MNIST/raw
    assert list((tmp_path / "lightning_logs").iterdir()) == []
