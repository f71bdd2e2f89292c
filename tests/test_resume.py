"""Exact resume: a run interrupted by SIGKILL, SIGTERM or SIGINT and resumed ends bit-identical to
an uninterrupted run with the same seed (CPU), with its curves in one run folder."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, run_cli, write_idx_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TESTS_DIR = Path(__file__).resolve().parent
# Dropout on, so the global RNG matters too; 1000 images -> 15 batches per epoch.
RUN_ARGS = (*TINY_ARGS, "--trainer.max_epochs", "3", "--model.dropout", "0.2", "--torch_threads", "1")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("resume") / "data", n_train=1000, n_test=200)


@pytest.fixture(scope="module")
def uninterrupted(data_dir: Path, tmp_path_factory) -> Path:
    """The reference: one run from start to end."""
    workdir = tmp_path_factory.mktemp("reference")
    result = run_cli("fit", "--data.data_dir", str(data_dir), *RUN_ARGS, cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "lightning_logs" / "version_0"


def _fit(workdir: Path, *extra: str, faults: bool = False) -> object:
    env = {"PYTHONPATH": f"{TESTS_DIR.parent}:{TESTS_DIR}", "FAULT_INJECTION": "1" if faults else "0"}
    return run_cli(*extra, cwd=workdir, env=env)


def _inject(signal_name: str, epoch: int, batch: int) -> tuple[str, ...]:
    return ("--trainer.callbacks+=fault_injection.SignalAt", "--trainer.callbacks.epoch", str(epoch),
            "--trainer.callbacks.batch", str(batch), "--trainer.callbacks.signal_name", signal_name)


def _final_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def _scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)] if tag in acc.Tags()["scalars"] else []


def assert_bit_identical(run_dir: Path, reference_dir: Path, fast: bool = False) -> None:
    ours, theirs = _final_state(run_dir), _final_state(reference_dir)
    assert ours.keys() == theirs.keys()
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key} differs from the uninterrupted run"
    for tag in ("val/acc", "val/loss", "train/loss", "train/acc"):
        # A resumed run appends to the same folder; compare each epoch's last logged value.
        mine, reference = dict(_scalars(run_dir, tag)), dict(_scalars(reference_dir, tag))
        if fast and tag == "train/loss":  # the fast class sums the same losses in another order: last bit
            assert mine == pytest.approx(reference, rel=1e-6), tag
        else:
            assert mine == reference, tag


@pytest.mark.slow
@pytest.mark.parametrize(("signal_name", "batch", "trained", "fast"), [
    ("SIGTERM", 6, 7, False),  # the signal comes during batch 6: it ends, then the save
    ("SIGINT", 6, 7, False),
    ("SIGTERM", 14, 15, False),  # during the epoch's last batch: saved with the whole epoch trained
    ("SIGTERM", 6, 10, True),  # FastMNISTClassifier, 10 batches per call: the call of batches 0..9 ends first
    ("SIGTERM", 12, 15, True),  # during the epoch's last call (batches 10..14)
])
def test_signal_mid_epoch_saves_position_and_resumes_bit_identical(signal_name, batch, trained, fast, data_dir,
                                                                   uninterrupted, tmp_path):
    """Interrupted and resumed, the idiomatic and the fast class both end with the uninterrupted run's weights."""
    speed = ("--config", str(TESTS_DIR.parent / "configs" / "fast.yaml"), "--model.steps_per_call", "10") if fast else ()
    first = _fit(tmp_path, "fit", "--data.data_dir", str(data_dir), *RUN_ARGS, *speed,
                 *_inject(signal_name, epoch=1, batch=batch), faults=True)
    assert first.returncode == 128 + getattr(signal, signal_name), first.stderr
    assert "--ckpt_path last" in first.stderr  # one line saying how to resume
    run_dir = tmp_path / "lightning_logs" / "version_0"
    position = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert position == [{"epoch": 1, "batches": trained}]

    resumed = _fit(tmp_path, "fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]  # curves stay in one run
    assert_bit_identical(run_dir, uninterrupted, fast=fast)


@pytest.mark.slow
def test_sigkill_then_resume_from_last_epoch_end_is_bit_identical(data_dir, uninterrupted, tmp_path):
    killed = _fit(tmp_path, "fit", "--data.data_dir", str(data_dir), *RUN_ARGS, *_inject("SIGKILL", epoch=2, batch=4), faults=True)
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1  # end of epoch 1 survived

    resumed = _fit(tmp_path, "fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, uninterrupted)


@pytest.mark.slow
def test_resuming_twice_from_the_same_checkpoint_gives_the_same_result(data_dir, tmp_path):
    first = _fit(tmp_path, "fit", "--data.data_dir", str(data_dir), *RUN_ARGS, *_inject("SIGTERM", epoch=1, batch=3), faults=True)
    assert first.returncode == 128 + signal.SIGTERM
    checkpoint = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    saved = tmp_path / "interrupted.ckpt"
    saved.write_bytes(checkpoint.read_bytes())
    finals = []
    for attempt in ("a", "b"):
        workdir = tmp_path / attempt
        workdir.mkdir()
        result = _fit(workdir, "fit", "--data.data_dir", str(data_dir), *RUN_ARGS, "--ckpt_path", str(saved))
        assert result.returncode == 0, result.stderr
        finals.append(_final_state(workdir / "lightning_logs" / "version_0"))
    for key in finals[0]:
        assert torch.equal(finals[0][key], finals[1][key]), key


def test_ckpt_path_last_with_nothing_to_resume_is_an_error_that_says_where_it_looked(tiny_data, tmp_path):
    result = run_cli("fit", "--data.data_dir", str(tiny_data), *TINY_ARGS, "--ckpt_path", "last",
                     "--trainer.logger.init_args.version", "7", cwd=tmp_path)
    assert result.returncode == 2
    assert "nothing to resume" in result.stderr and str(Path("lightning_logs") / "version_7" / "checkpoints") in result.stderr
    assert "Traceback" not in result.stderr


def test_rerun_into_an_existing_run_folder_is_refused_and_loses_nothing(tiny_data, tmp_path):
    args = ("fit", "--data.data_dir", str(tiny_data), *TINY_ARGS, "--trainer.max_epochs", "1")
    assert run_cli(*args, cwd=tmp_path).returncode == 0
    run_dir = tmp_path / "lightning_logs" / "version_0"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    again = run_cli("fit", "--config", str(run_dir / "config.yaml"), cwd=tmp_path)
    assert again.returncode == 2
    assert "already holds checkpoints" in again.stderr and "--ckpt_path last" in again.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


@pytest.mark.real_data
@pytest.mark.slow
def test_sigterm_on_real_mnist_then_resume_is_bit_identical(real_data, tmp_path):
    """The default config on the official data: SIGTERM in the middle of epoch 1, resume, compare."""
    args = ("fit", "--data.data_dir", str(real_data), "--trainer.max_epochs", "2", "--trainer.enable_progress_bar",
            "false", "--torch_threads", "1")
    reference_dir, interrupted_dir = tmp_path / "reference", tmp_path / "interrupted"
    reference_dir.mkdir()
    interrupted_dir.mkdir()
    assert _fit(reference_dir, *args).returncode == 0
    first = _fit(interrupted_dir, *args, *_inject("SIGTERM", epoch=1, batch=400), faults=True)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr
    run_dir = interrupted_dir / "lightning_logs" / "version_0"
    resumed = _fit(interrupted_dir, "fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr
    assert_bit_identical(run_dir, reference_dir / "lightning_logs" / "version_0")
