"""scripts/readme_figure.py: the README's picture of a run, drawn from a real CLI run's event files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

SCRIPT = PROJECT_ROOT / "scripts" / "readme_figure.py"


def draw(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_draws_a_real_run(tiny_data: Path, tmp_path: Path) -> None:
    fit = run_cli("fit", "--data.data_dir", str(tiny_data), *TINY_ARGS, "--trainer.max_epochs", "2",
                  "--torch_threads", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    output = tmp_path / "images" / "run.png"
    result = draw("--run", "lightning_logs/version_0", "--output", str(output), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout
    figure = Image.open(output)
    assert 1000 <= figure.width <= 1600 and 400 <= figure.height <= 800, figure.size
    pixels = np.asarray(figure.convert("L"), dtype=np.float32)
    assert pixels.std() > 20, "the figure is (nearly) blank"
    assert (pixels < 128).mean() > 0.02, "too little ink: the curves or the figures are missing"
    assert output.stat().st_size < 200_000

    # Without the predictions grid the picture is narrower, and still drawn.
    narrow = tmp_path / "narrow.png"
    assert draw("--run", "lightning_logs/version_0", "--output", str(narrow), "--no-predictions", cwd=tmp_path).returncode == 0
    assert Image.open(narrow).width < figure.width


def test_missing_tag_names_it_and_the_command(tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SummaryWriter(str(run)) as writer:  # curves only, no figures: as with ValidationFigures left out
        for step in (10, 20):
            for tag in ("train/loss", "val/loss", "train/acc", "val/acc"):
                writer.add_scalar(tag, 0.5, step)
    result = draw("--run", str(run), "--output", str(tmp_path / "x.png"), cwd=tmp_path)
    assert result.returncode == 1
    message = result.stderr.strip()
    assert len(message.splitlines()) == 1, message
    assert "'val/confusion_matrix'" in message and "python -m mnist_lightning fit" in message, message
    assert not (tmp_path / "x.png").exists()


def test_folder_without_events(tmp_path: Path) -> None:
    result = draw("--run", str(tmp_path), "--output", str(tmp_path / "x.png"), cwd=tmp_path)
    assert result.returncode == 1
    assert "no TensorBoard event files" in result.stderr and "python -m mnist_lightning fit" in result.stderr
