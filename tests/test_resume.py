"""Exact resume: a run interrupted by SIGKILL, SIGTERM or SIGINT and resumed ends bit-identical to
an uninterrupted run with the same seed (CPU), with its curves in one run folder, whatever the net;
and a resume refuses settings that would make it another run.

The interrupted runs are real processes (`start_forked`: forked from a server that has imported the
project, so each skips the seconds of `import torch, pytorch_lightning`): the signal, what the process
writes before it dies and its exit code are the subject. Uninterrupted references and resumes run in this process
(`run_cli`), shared where several tests compare against the same reference.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, built_once, run_cli, start_forked, write_idx_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning import MNISTClassifier

TESTS_DIR = Path(__file__).resolve().parent
# Dropout on, so the global RNG matters too; 1000 images -> 15 batches per epoch.
RUN_ARGS = (*TINY_ARGS, "--trainer.max_epochs", "3", "--model.net.init_args.dropout", "0.2", "--torch_threads", "1")

# A user's own net, in a folder of their own (not the project's): convolutions, BatchNorm2d running
# statistics (buffers a resume must restore) and dropout (the global RNG).
MY_NETS = '''"""My own nets, for `--model.net my_nets.SmallCNN`."""

import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 7 * 7, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
'''
# The user's net with a schedule that spans the run (its length is the run's steps).
CNN_ARGS = (*TINY_ARGS, "--trainer.max_epochs", "2", "--model.net", "my_nets.SmallCNN",
            "--model.lr_scheduler", "mnist_lightning.models.OneCycle", "--torch_threads", "1")


# The data and the uninterrupted references are built once for the whole run (`built_once`), whichever
# pytest-xdist worker asks first: the tests of one reference often land on both workers.
@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def build(folder: Path) -> None:
        write_idx_dataset(folder / "data", n_train=1000, n_test=200)

    return built_once(tmp_path_factory, "resume-data", build) / "data"


def _reference_run(tmp_path_factory: pytest.TempPathFactory, name: str, args: tuple[str, ...],
                   env: dict[str, str] | None = None) -> Path:
    """`fit ARGS` from start to end, in this process: the run an interrupted one must end equal to."""
    def build(workdir: Path) -> None:
        result = run_cli("fit", *args, cwd=workdir, env=env)
        assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, name, build) / "lightning_logs" / "version_0"


@pytest.fixture(scope="session")
def uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one run from start to end (READ-ONLY: tests that resume into it copy it)."""
    return _reference_run(tmp_path_factory, "resume-reference", ("--data.data_dir", str(data_dir), *RUN_ARGS))


@pytest.fixture(scope="session")
def nets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder outside the project with the user's `my_nets.py`, put on PYTHONPATH by each command."""
    return built_once(tmp_path_factory, "resume-user-nets", lambda folder: (folder / "my_nets.py").write_text(MY_NETS))


@pytest.fixture(scope="session")
def cnn_uninterrupted(data_dir: Path, nets_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's net trained from start to end: the reference of the tests of `CNN_ARGS` (READ-ONLY)."""
    return _reference_run(tmp_path_factory, "resume-cnn-reference", ("--data.data_dir", str(data_dir), *CNN_ARGS),
                          env={"PYTHONPATH": str(nets_dir)})


def _fit_interrupted(workdir: Path, *args: str, nets: Path | None = None) -> subprocess.CompletedProcess:
    """`fit ARGS` in a new process with the fault injection armed: a signal kills or stops it mid-run."""
    path = os.pathsep.join([*([str(nets)] if nets else []), str(TESTS_DIR)])  # fault_injection, my_nets
    log = workdir / "interrupted-fit.console"
    process = start_forked("fit", *args, cwd=workdir, log=log, env={"PYTHONPATH": path, "FAULT_INJECTION": "1"})
    code = process.wait(timeout=300)
    console = log.read_text()  # stdout and stderr as one console: what a person at the terminal sees
    return subprocess.CompletedProcess(process.args, code, console, console)


def _fit_here(workdir: Path, *args: str, nets: Path | None = None):
    """`fit ARGS` in this process (a reference or a resume); a resumed run's saved config lists the
    fault injection, unarmed here."""
    env = {"FAULT_INJECTION": "0", **({"PYTHONPATH": str(nets)} if nets else {})}
    return run_cli("fit", *args, cwd=workdir, env=env)


def _inject(signal_name: str, epoch: int, batch: int) -> tuple[str, ...]:
    return ("--trainer.callbacks+=fault_injection.SignalAt", "--trainer.callbacks.epoch", str(epoch),
            "--trainer.callbacks.batch", str(batch), "--trainer.callbacks.signal_name", signal_name)


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def assert_same_weights(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    """Every tensor of the state_dict (weights and buffers) equal, bit for bit."""
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs from the uninterrupted run"


def assert_bit_identical(run_dir: Path, reference_dir: Path, fast: bool = False) -> None:
    assert_same_weights(_final_state(run_dir), _final_state(reference_dir))
    for tag in ("val/acc", "val/loss", "train/loss", "train/acc"):
        # A resumed run appends to the same folder; compare each epoch's last logged value.
        mine, reference = dict(_scalars(run_dir, tag)), dict(_scalars(reference_dir, tag))
        assert reference, tag  # the comparison compares something
        if fast and tag == "train/loss":  # the fast class sums the same losses in another order: last bit
            assert mine == pytest.approx(reference, rel=1e-6), tag
        else:
            assert mine == reference, tag


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "batch", "trained", "fast", "elsewhere"), [
    # The signal comes during batch 6: it ends, then the save. The same checkpoint is resumed a second
    # time in a fresh folder by its path: a resume is reproducible, wherever it runs.
    ("SIGTERM", 6, 7, False, True),
    ("SIGINT", 6, 7, False, False),
    ("SIGTERM", 14, 15, False, False),  # during the epoch's last batch: saved with the whole epoch trained
    ("SIGTERM", 6, 10, True, False),  # FastMNISTClassifier, 10 batches per call: the call of batches 0..9 ends first
    ("SIGTERM", 12, 15, True, False),  # during the epoch's last call (batches 10..14)
])
def test_signal_mid_epoch_saves_position_and_resumes_bit_identical(signal_name, batch, trained, fast, elsewhere,
                                                                   data_dir, uninterrupted, tmp_path):
    """Interrupted and resumed, the idiomatic and the fast class both end with the uninterrupted run's weights."""
    speed = (("--config", str(TESTS_DIR.parent / "configs" / "fast.yaml"), "--model.steps_per_call", "10") if fast
             else ())
    first = _fit_interrupted(tmp_path, "--data.data_dir", str(data_dir), *RUN_ARGS, *speed,
                         *_inject(signal_name, epoch=1, batch=batch))
    assert first.returncode == 128 + getattr(signal, signal_name), first.stderr
    assert "--ckpt_path last" in first.stderr  # one line saying how to resume
    run_dir = tmp_path / "lightning_logs" / "version_0"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    position = torch.load(checkpoint, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == [{"epoch": 1, "batches": trained}]
    saved = tmp_path / "interrupted.ckpt"
    shutil.copyfile(checkpoint, saved)

    resumed = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # curves stay in one run
    assert_bit_identical(run_dir, uninterrupted, fast=fast)
    if elsewhere:
        again = tmp_path / "again"
        again.mkdir()
        result = _fit_here(again, "--data.data_dir", str(data_dir), *RUN_ARGS, "--ckpt_path", str(saved))
        assert result.returncode == 0, result.stderr
        assert_same_weights(_final_state(again / "lightning_logs" / "version_0"), _final_state(uninterrupted))


@pytest.mark.slow
def test_sigkill_then_resume_from_last_epoch_end_is_bit_identical(data_dir, uninterrupted, tmp_path):
    killed = _fit_interrupted(tmp_path, "--data.data_dir", str(data_dir), *RUN_ARGS,
                              *_inject("SIGKILL", epoch=2, batch=4))
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # end of epoch 1 survived

    resumed = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, uninterrupted)


# Training-batch augmentation on (mnist_lightning/augment.py), over the dropout run: 2 epochs of 15 batches.
AUGMENT_ARGS = (*RUN_ARGS, "--trainer.max_epochs", "2", "--data.augment", "mnist_lightning.data.ElasticJitter")


@pytest.fixture(scope="session")
def augmented_uninterrupted(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference of the augmentation tests: augmented from start to end (READ-ONLY)."""
    return _reference_run(tmp_path_factory, "resume-augmented-reference",
                          ("--data.data_dir", str(data_dir), *AUGMENT_ARGS))


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "batch", "saved_epoch"), [
    ("SIGKILL", 4, 0),  # killed in epoch 1: resumed from the end of epoch 0, epoch 1's draws are drawn again
    ("SIGTERM", 6, 1),  # saved after batch 7 of epoch 1: the resumed run draws batch 7's numbers, not batch 0's
])
def test_an_augmented_run_killed_then_resumed_is_bit_identical(signal_name, batch, saved_epoch, data_dir,
                                                               augmented_uninterrupted, tmp_path):
    """The augmentation's random numbers are a function of (seed, rank, epoch, batch index), all of which the
    checkpoint fixes: the resumed run feeds the net the same augmented batches and ends with the same weights."""
    first = _fit_interrupted(tmp_path, "--data.data_dir", str(data_dir), *AUGMENT_ARGS,
                             *_inject(signal_name, epoch=1, batch=batch))
    expected = -signal.SIGKILL if signal_name == "SIGKILL" else 128 + signal.SIGTERM
    assert first.returncode == expected, first.stderr
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == saved_epoch

    resumed = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, augmented_uninterrupted)


@pytest.mark.slow
def test_a_users_own_net_sigkilled_mid_epoch_resumes_bit_identical(data_dir, nets_dir, cnn_uninterrupted, tmp_path):
    """`--model.net my_nets.SmallCNN` from a folder of the user's, with a run-long OneCycle schedule:
    killed in the middle of its last epoch, resumed from the saved config alone, it ends with the
    uninterrupted run's weights and buffers, bit for bit."""
    killed = _fit_interrupted(tmp_path, "--data.data_dir", str(data_dir), *CNN_ARGS,
                              *_inject("SIGKILL", epoch=1, batch=6), nets=nets_dir)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    run_dir = tmp_path / "lightning_logs" / "version_0"
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 0  # the end of epoch 0 survived the kill
    assert checkpoint["hyper_parameters"]["net"]["class_path"] == "my_nets.SmallCNN"
    assert "net.features.1.running_mean" in checkpoint["state_dict"]  # the user's net, buffers and all

    resumed = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last", nets=nets_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, cnn_uninterrupted)


def test_a_users_net_is_rebuilt_from_its_checkpoint_alone(cnn_uninterrupted, nets_dir, monkeypatch):
    """`load_from_checkpoint` (export, your own scripts) rebuilds the user's net from the saved class
    path and init args, with the trained weights: nothing to retype."""
    monkeypatch.syspath_prepend(str(nets_dir))
    try:
        loaded = MNISTClassifier.load_from_checkpoint(cnn_uninterrupted / "checkpoints" / "last.ckpt",
                                                      weights_only=True)
    finally:
        sys.modules.pop("my_nets", None)  # imported for this test only
    assert type(loaded.net).__module__ == "my_nets" and type(loaded.net).__name__ == "SmallCNN"
    assert_same_weights(loaded.state_dict(), _final_state(cnn_uninterrupted))


@pytest.mark.parametrize(("flag", "value", "refusal"), [
    ("--model.optimizer.init_args.lr", "0.01", "resuming with model.optimizer.init_args.lr=0.01, but the checkpoint "
                                               "was trained with model.optimizer.init_args.lr=0.001"),
    ("--model.net.init_args.width", "16", "resuming with model.net.init_args.width=16, but the checkpoint was "
                                          "trained with model.net.init_args.width=8"),
    ("--trainer.max_epochs", "3", "resuming with trainer.max_epochs=3, but the checkpoint was trained with "
                                  "trainer.max_epochs=2: an exact resume keeps it. Drop the option (or pass 2); to "
                                  "change it, start a new run. (The schedule spans the run's 2 epochs.)"),
])
def test_a_resume_of_a_users_net_refuses_a_changed_setting_naming_it(flag, value, refusal, cnn_uninterrupted,
                                                                     nets_dir, tmp_path):
    """The checkpoint's settings are compared key by key, for the user's net's arguments and the
    optimizer's too; a run-long schedule also fixes the epochs. Nothing of the run changes."""
    shutil.copytree(cnn_uninterrupted.parent, tmp_path / "lightning_logs")
    run_dir = tmp_path / "lightning_logs" / "version_0"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last", flag, value,
                     nets=nets_dir)
    assert result.returncode == 2, result.stderr
    assert refusal in result.stderr and "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_a_run_without_a_run_long_schedule_may_be_extended(uninterrupted, tmp_path):
    """More epochs are refused only where the schedule's length depends on them: a constant learning
    rate run continues for another epoch."""
    shutil.copytree(uninterrupted.parent, tmp_path / "lightning_logs")
    run_dir = tmp_path / "lightning_logs" / "version_0"
    result = _fit_here(tmp_path, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                     "--trainer.max_epochs", "4")
    assert result.returncode == 0, result.stderr
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 3  # the 4th epoch ran


def test_ckpt_path_last_with_nothing_to_resume_is_an_error_that_says_where_it_looked(shared_tiny_data, tmp_path):
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--ckpt_path", "last",
                     "--trainer.logger.init_args.version", "7", cwd=tmp_path)
    assert result.returncode == 2
    assert ("nothing to resume" in result.stderr
            and str(Path("lightning_logs") / "version_7" / "checkpoints") in result.stderr)
    assert "Traceback" not in result.stderr


def test_rerun_into_an_existing_run_folder_is_refused_and_loses_nothing(trained_run_copy):
    run_dir = trained_run_copy.run_dir
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_cli("fit", "--config", str(run_dir / "config.yaml"), cwd=trained_run_copy.workdir)
    assert again.returncode == 2
    assert "already holds checkpoints" in again.stderr and "--ckpt_path last" in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.real_data
@pytest.mark.slow
def test_sigterm_on_real_mnist_then_resume_is_bit_identical(real_data, tmp_path):
    """The default config on the official data: SIGTERM in the middle of epoch 1, resume, compare."""
    args = ("--data.data_dir", str(real_data), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
            "false", "--torch_threads", "1")
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    reference_dir.mkdir()
    interrupted_dir.mkdir()
    assert _fit_here(reference_dir, *args).returncode == 0
    first = _fit_interrupted(interrupted_dir, *args, *_inject("SIGTERM", epoch=1, batch=400))
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    run_dir = interrupted_dir / "lightning_logs" / "version_0"
    resumed = _fit_here(interrupted_dir, "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, reference_dir / "lightning_logs" / "version_0")
