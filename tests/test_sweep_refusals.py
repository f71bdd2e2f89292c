"""A sweep never mixes differently trained trials, and every way it can stop ends with one line, before any trial
where it can (`python -m mnist_lightning sweep`).

In this process (`run_cli`) where the subject is the message and what is left on disk; a real process for
Ctrl+C, where the signal and the console output are the subject.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import yaml
from conftest import PROJECT_ROOT, TINY_ARGS, probe_env, run_cli, start_forked
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from pytorch_lightning.callbacks import Callback

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")

SEED_CONFIG = PROJECT_ROOT / "configs" / "seed.yaml"
ONE_POINT = {"model.net.init_args.hidden_sizes": {"type": "categorical", "choices": [[8]]}}


def write_sweep(folder: Path, name: str = "tiny", **fields: object) -> Path:
    """One trial of the tutorial config at one point, no pruning, a 1 s heartbeat."""
    spec = {"configs": [str(SEED_CONFIG)], "n_trials": 1, "pruner": "optuna.pruners.NopPruner",
            "heartbeat": {"interval": 1, "grace_period": 3}, "search_space": ONE_POINT} | fields
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fit_args(data: Path) -> list[str]:
    """Tiny data, one thread, one epoch of two batches: a trial takes about a second."""
    return ["--data.data_dir", str(data), *TINY_ARGS, "--torch_threads", "1", "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "2"]


def study_of(cwd: Path, name: str = "tiny") -> optuna.Study:
    db = cwd / "lightning_logs" / "sweeps" / name / "study.db"
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


def error_line(stderr: str) -> str:
    """The one line a refused sweep ends with: no traceback, nothing after it."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: "), stderr[-3000:]
    return last


def run_folders(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / "lightning_logs").glob("version_*"))


# ------------------------------------------------------------------------------------------- one study, one training
@pytest.mark.slow
def test_a_study_refuses_to_continue_with_other_fit_options(shared_tiny_data: Path, tmp_path: Path) -> None:
    """Dropping `--trainer.limit_train_batches` on a re-run would train longer trials into the same study, whose
    "best" would then be the longest-trained one: refused before any trial, naming the option and --name."""
    sweep = str(write_sweep(tmp_path))
    first = run_cli("sweep", "--config", sweep, *fit_args(shared_tiny_data), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    longer = [a for a in fit_args(shared_tiny_data) if a not in ("--trainer.limit_train_batches", "2")]
    again = run_cli("sweep", "--config", sweep, "--n_trials", "2", *longer, cwd=tmp_path)
    assert again.returncode == 2, again.stderr[-3000:]
    line = error_line(again.stderr)
    assert "trainer.limit_train_batches" in line and "--name" in line, line
    assert len(study_of(tmp_path).trials) == 1 and run_folders(tmp_path) == ["version_0"]  # no trial started

    # Where the data lives, and how the console looks, are each worker's own: the same data from another
    # folder continues the study.
    elsewhere = tmp_path / "copy of the data"
    shutil.copytree(shared_tiny_data, elsewhere)
    moved = [str(elsewhere) if a == str(shared_tiny_data) else a for a in fit_args(shared_tiny_data)]
    more = run_cli("sweep", "--config", sweep, "--n_trials", "2", *moved, "--trainer.enable_progress_bar", "true",
                   cwd=tmp_path)
    assert more.returncode == 0, more.stderr[-3000:]
    assert [t.state.name for t in study_of(tmp_path).trials] == ["COMPLETE", "COMPLETE"]


@pytest.mark.slow
def test_a_study_refuses_a_changed_run_config_or_metric(shared_tiny_data: Path, tmp_path: Path) -> None:
    """The sweep file's run configs count by what they set, not by their file names; the metric is what the
    trials are compared by. The study keeps the record itself: here a journal file, as on a cluster."""
    config = tmp_path / "base.yaml"
    config.write_text(SEED_CONFIG.read_text())
    sweep = str(write_sweep(tmp_path, configs=[str(config)]))
    journal = tmp_path / "journal.log"
    args = [*fit_args(shared_tiny_data), "--storage", f"journal:{journal}"]
    first = run_cli("sweep", "--config", sweep, *args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]

    config.write_text(SEED_CONFIG.read_text().replace("batch_size: 64", "batch_size: 32"))
    edited = run_cli("sweep", "--config", sweep, "--n_trials", "2", *args, cwd=tmp_path)
    assert edited.returncode == 2, edited.stderr[-3000:]
    line = error_line(edited.stderr)
    assert "data.batch_size" in line and "64" in line and "32" in line and "--name" in line, line

    config.write_text(SEED_CONFIG.read_text())
    write_sweep(tmp_path, configs=[str(config)], metric="val/loss", direction="maximize")
    other_metric = run_cli("sweep", "--config", sweep, "--n_trials", "2", *args, cwd=tmp_path)
    assert other_metric.returncode == 2, other_metric.stderr[-3000:]
    assert "val/loss" in error_line(other_metric.stderr)
    study = optuna.load_study(study_name="tiny", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert len(study.trials) == 1 and run_folders(tmp_path) == ["version_0"]


# ------------------------------------------------------------------------------------------- found before trial 0
def test_a_metric_that_no_trial_logs_is_refused_before_the_first_trial(shared_tiny_data: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, metric="val/accuracy")
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "val/accuracy" in line and "val/acc" in line and "metric" in line, line  # names what is logged
    assert not (tmp_path / "lightning_logs").exists()  # no trial, no run folder, no study


def test_a_sweep_without_validation_is_refused_before_the_first_trial(shared_tiny_data: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path)  # metric: val/acc, the default
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data), "--data.val_size", "0",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "'val/acc' is not logged" in line and "no validation" in line and "--data.val_size 0" in line, line
    assert not (tmp_path / "lightning_logs").exists()  # no trial, no run folder, no study


def test_missing_data_is_found_before_the_first_trial(tmp_path: Path) -> None:
    # A proxy that refuses at once: the download fails here whether or not the machine is online.
    offline = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path)), *fit_args(tmp_path / "no_such_folder"),
                     cwd=tmp_path, env=offline)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.count("\n") == 1 and "Trial 0" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "no_such_folder" in line and "--data.data_dir" in line, line
    assert not (tmp_path / "lightning_logs").exists()


# ------------------------------------------------------------------------------------------- the study's storage
@pytest.mark.slow
def test_a_corrupt_study_file_is_one_line(shared_tiny_data: Path, tmp_path: Path) -> None:
    sweep = str(write_sweep(tmp_path))
    db = tmp_path / "lightning_logs" / "sweeps" / "tiny" / "study.db"
    db.parent.mkdir(parents=True)
    db.write_bytes(os.urandom(4096))
    for extra in (["--summary"], fit_args(shared_tiny_data)):
        result = run_cli("sweep", "--config", sweep, *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr[-3000:]
        line = error_line(result.stderr)
        assert str(db) in line and "--name" in line, line
    assert run_folders(tmp_path) == []


def test_a_corrupt_journal_is_one_line(tmp_path: Path) -> None:
    journal = tmp_path / "journal.log"
    journal.write_bytes(os.urandom(4096))
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path)), "--summary", "--storage", f"journal:{journal}",
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert str(journal) in error_line(result.stderr)


def test_a_refused_storage_leaves_no_sweep_folder(shared_tiny_data: Path, tmp_path: Path) -> None:
    journal = tmp_path / "not_created" / "journal.log"
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path)), "--storage", f"journal:{journal}",
                     *fit_args(shared_tiny_data), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "does not exist" in error_line(result.stderr)
    assert not (tmp_path / "lightning_logs").exists()


@pytest.mark.parametrize("name", ["a/../../b", "../b", "..", "/tmp/b", "a b", ""])
def test_a_study_name_must_be_one_safe_folder_name(shared_tiny_data: Path, tmp_path: Path, name: str) -> None:
    """`--name a/../../b` wrote lightning_logs/b: a name is one folder inside the sweeps folder."""
    work = tmp_path / "work"
    work.mkdir()
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path)), "--name", name, *fit_args(shared_tiny_data),
                     cwd=work)
    assert result.returncode == 2, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "--name" in line and "letters, digits" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml", "work"] and not list(work.iterdir())


# ------------------------------------------------------------------------------------------- Ctrl+C (real processes)
class HoldTrial(Callback):
    """Test hook, added by class path, for the Ctrl+C tests. With $HOLD_DIR set:

    * $HOLD_AT=start: while the first trial's CLI builds its parts (this callback's __init__), once its run
      folder is claimed: Ctrl+C before the fit, where no checkpoint callback has a handler yet;
    * $HOLD_AT=batch: after the first trial's first training batch, mid-fit.

    It writes `$HOLD_DIR/ready` and waits (60 s at most) until the test writes `$HOLD_DIR/go`.
    """

    def __init__(self) -> None:
        if os.environ.get("HOLD_AT") == "start" and Path("lightning_logs/version_0").is_dir():
            self._hold()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if os.environ.get("HOLD_AT") == "batch" and Path(trainer.log_dir or "").name == "version_0" and batch_idx == 0:
            self._hold()

    @staticmethod
    def _hold() -> None:
        folder = Path(os.environ["HOLD_DIR"])
        (folder / "ready").touch()
        deadline = time.monotonic() + 60
        while not (folder / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


def ctrl_c_in_trial(data: Path, tmp_path: Path, hold_at: str) -> tuple[int, str]:
    """Start a one-trial sweep, press Ctrl+C (SIGINT to the process group) where HoldTrial holds: exit code and
    output."""
    hold = tmp_path / "hold"
    hold.mkdir()
    args = ["sweep", "--config", str(write_sweep(tmp_path)), *fit_args(data),
            "--trainer.callbacks+=test_sweep_refusals.HoldTrial"]
    log = tmp_path / "sweep.log"
    process = start_forked(*args, cwd=tmp_path, log=log, env={**probe_env(), "HOLD_DIR": str(hold), "HOLD_AT": hold_at})
    try:
        deadline = time.monotonic() + 120
        while not (hold / "ready").exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (hold / "ready").exists(), log.read_text()[-3000:]
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.2)  # the signal is handled before the hold ends
        (hold / "go").touch()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return code, log.read_text()


@pytest.mark.slow
def test_ctrl_c_mid_trial_is_one_line_and_fails_the_trial(shared_tiny_data: Path, tmp_path: Path) -> None:
    code, output = ctrl_c_in_trial(shared_tiny_data, tmp_path, "batch")
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and "_SweepInterrupted" not in output, output[-3000:]
    # A trial's own "Resume with: ... fit" would continue its run outside the study: the sweep says how to go on.
    assert "Resume with:" not in output, output[-3000:]
    assert output.rstrip().splitlines()[-1].startswith("interrupted: "), output[-3000:]
    assert [t.state.name for t in study_of(tmp_path).trials] == ["FAIL"]


@pytest.mark.slow
def test_ctrl_c_while_a_trial_starts_is_one_line_and_fails_the_trial(shared_tiny_data: Path, tmp_path: Path) -> None:
    code, output = ctrl_c_in_trial(shared_tiny_data, tmp_path, "start")
    assert code == 130, output[-3000:]
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]
    assert output.rstrip().splitlines()[-1].startswith("interrupted: "), output[-3000:]
    assert [t.state.name for t in study_of(tmp_path).trials] == ["FAIL"]
