"""Shared fixtures: tiny valid IDX datasets written by the tests, the real data folder, a CLI runner."""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REAL_DATA_DIR = (PROJECT_ROOT / ".." / "shared" / "data" / "mnist").resolve()
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_images_bytes(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = (0x803).to_bytes(4, "big") + n.to_bytes(4, "big") + rows.to_bytes(4, "big") + cols.to_bytes(4, "big")
    return header + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    return (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights a bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        row = 2 + 2 * int(k)
        images[i, row : row + 3, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True, layout: str = "flat",
                      raw_folder: str = "MNIST/raw", seed: int = 0) -> Path:
    """Write four small, valid IDX files (not the official ones: load them with verify=False)."""
    target = folder if layout == "flat" else folder / raw_folder
    target.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_digits(n_train, seed)
    test_x, test_y = make_digits(n_test, seed + 1)
    contents = [idx_images_bytes(train_x), idx_labels_bytes(train_y), idx_images_bytes(test_x), idx_labels_bytes(test_y)]
    for name, data in zip(IDX_NAMES, contents, strict=True):
        if gz:
            (target / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (target / name).write_bytes(data)
    return folder


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A folder with 600 training and 200 test fake digits, gzipped, flat layout."""
    return write_idx_dataset(tmp_path / "tiny")


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the official MNIST files are not in {REAL_DATA_DIR} (see README, 'Data')")
    return REAL_DATA_DIR


def run_cli(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mnist_lightning ARGS` in `cwd`, the way a user does."""
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "mnist_lightning", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )


# Arguments that make a CLI run on tiny fake data small and quiet.
TINY_ARGS = ("--data.verify", "false", "--data.val_size", "100", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false")


def start_cli(*args: str, cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `python -m mnist_lightning ARGS` in `cwd`, in a process group of its own (so a test can kill it
    whole with os.killpg), stdout and stderr into `log`."""
    full_env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), **(env or {})}
    with open(log, "w") as out:
        return subprocess.Popen([sys.executable, "-m", "mnist_lightning", *args], cwd=cwd, env=full_env,
                                stdout=out, stderr=subprocess.STDOUT, text=True, start_new_session=True)
