"""A run written by release 0.1.0 (tests/fixtures/release_0_1_0: its config.yaml and last.ckpt, which name the
old class paths `mnist_lightning.model.MNISTClassifier`, `mnist_lightning.model.MLP` and
`mnist_lightning.figures.ValidationFigures`) still tests, predicts, exports and resumes exactly."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REAL_DATA_DIR, TESTS_DIR, run_cli
from PIL import Image

FIXTURE = TESTS_DIR / "fixtures" / "release_0_1_0"
# The weights 0.1.0 itself reached resuming this checkpoint for one more epoch (equal to a straight 2-epoch run).
RESUMED_DIGEST = "041273d560b907fea7f6c1f26ad60c0d670ed9518fc53adce1d0bce5bd4fb77f"
QUIET = ("--trainer.enable_progress_bar", "false")

pytestmark = pytest.mark.real_data


def weights_digest(ckpt: Path) -> str:
    """scripts/weights_digest.py's combined digest: SHA-256 over one line per state_dict tensor, sorted by key."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    lines = []
    for key, value in sorted(state.items()):
        raw = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        lines.append(f"{hashlib.sha256(raw).hexdigest()}  {key}  {str(value.dtype).removeprefix('torch.')}  "
                     f"{list(value.shape)}")
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.fixture
def old_run(real_data: Path, tmp_path: Path) -> Path:
    """A copy of the 0.1.0 run (test and resume write into the run's folder)."""
    shutil.copytree(FIXTURE, tmp_path / "run", ignore=shutil.ignore_patterns("README.md"))
    return tmp_path / "run"


def test_the_fixture_names_the_old_class_paths() -> None:
    config = (FIXTURE / "config.yaml").read_text()
    assert "mnist_lightning.model.MNISTClassifier" in config and "mnist_lightning.figures.ValidationFigures" in config
    saved = torch.load(FIXTURE / "checkpoints" / "last.ckpt", weights_only=True)["hyper_parameters"]
    assert saved["_class_path"] == "mnist_lightning.model.MNISTClassifier"
    assert saved["net"]["class_path"] == "mnist_lightning.model.MLP"


def test_a_0_1_0_checkpoint_tests_as_it_did(old_run: Path) -> None:
    result = run_cli("test", "--ckpt_path", str(old_run / "checkpoints" / "last.ckpt"),
                     "--data.data_dir", str(REAL_DATA_DIR), *QUIET, cwd=old_run.parent)
    assert result.returncode == 0, result.stderr
    assert "Got 6913 / 10000 with accuracy 69.13" in result.stdout


def test_a_0_1_0_checkpoint_predicts_the_first_test_digits(old_run: Path) -> None:
    images = np.frombuffer(gzip.open(REAL_DATA_DIR / "t10k-images-idx3-ubyte.gz").read(), np.uint8, offset=16)
    digits = old_run.parent / "digits"
    digits.mkdir()
    for i, label in enumerate((7, 2, 1)):
        Image.fromarray(images.reshape(-1, 28, 28)[i]).save(digits / f"test{i}_label{label}.png")
    csv = old_run.parent / "predictions.csv"
    result = run_cli("predict", "--ckpt_path", str(old_run / "checkpoints" / "last.ckpt"),
                     "--data.predict_path", str(digits), "--predictions_csv", str(csv), *QUIET, cwd=old_run.parent)
    assert result.returncode == 0, result.stderr
    rows = [line.split(",") for line in csv.read_text().splitlines()[1:]]
    assert [(Path(row[0]).name, row[1]) for row in rows] == [
        ("test0_label7.png", "7"), ("test1_label2.png", "2"), ("test2_label1.png", "1")]


def test_a_0_1_0_checkpoint_exports(old_run: Path) -> None:
    pytest.importorskip("onnxruntime")
    output = old_run.parent / "model.onnx"
    result = run_cli("export", "--ckpt_path", str(old_run / "checkpoints" / "last.ckpt"), "--format", "onnx",
                     "--output", str(output), cwd=old_run.parent)
    assert result.returncode == 0, result.stderr
    assert output.stat().st_size > 100_000 and "logits match the checkpoint's" in result.stdout


@pytest.mark.slow
def test_a_0_1_0_run_resumes_for_one_more_epoch_bit_identically(old_run: Path) -> None:
    result = run_cli("fit", "--config", str(old_run / "config.yaml"), "--ckpt_path",
                     str(old_run / "checkpoints" / "last.ckpt"), "--trainer.max_epochs", "2",
                     "--data.data_dir", str(REAL_DATA_DIR), *QUIET, cwd=old_run.parent)
    assert result.returncode == 0, result.stderr
    resumed = old_run.parent / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(resumed, weights_only=True)["global_step"] == 40
    assert weights_digest(resumed) == RESUMED_DIGEST
