"""scripts/readme_figure.py: the README's picture of a run, drawn from a real CLI run's event files."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from conftest import PROJECT_ROOT, TrainedRun
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

SCRIPT = PROJECT_ROOT / "scripts" / "readme_figure.py"


@pytest.fixture(scope="module")
def script() -> ModuleType:
    """The script as a module, for the checks that need no process of their own."""
    spec = importlib.util.spec_from_file_location("readme_figure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def draw(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The script as a person runs it: its own process, nothing on its path but what it imports itself."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def refusal(script: ModuleType, *args: str) -> str:
    """The message the script exits with (`sys.exit(message)`: printed on stderr, exit status 1)."""
    with pytest.raises(SystemExit) as exit_info:
        script.main(list(args))
    assert isinstance(exit_info.value.code, str), exit_info.value.code  # a message, i.e. exit status 1
    return exit_info.value.code


@pytest.mark.slow
def test_draws_a_real_run(trained_run: TrainedRun, script: ModuleType, tmp_path: Path, capsys) -> None:
    """The shared 2-epoch default run (read only: the figure goes to tmp_path)."""
    output = tmp_path / "images" / "run.png"
    # A real process: the script must run standalone, as the README's command runs it.
    result = draw("--run", str(trained_run.run_dir), "--output", str(output), cwd=tmp_path)
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
    script.main(["--run", str(trained_run.run_dir), "--output", str(narrow), "--no-predictions"])
    assert "Wrote" in capsys.readouterr().out
    assert Image.open(narrow).width < figure.width


def test_missing_tag_names_it_and_the_command(script: ModuleType, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with SummaryWriter(str(run)) as writer:  # curves only, no figures: as with ValidationFigures left out
        for step in (10, 20):
            for tag in ("train/loss", "val/loss", "train/acc", "val/acc"):
                writer.add_scalar(tag, 0.5, step)
    message = refusal(script, "--run", str(run), "--output", str(tmp_path / "x.png")).strip()
    assert len(message.splitlines()) == 1, message
    assert "'val/confusion_matrix'" in message and "python -m mnist_lightning fit" in message, message
    assert not (tmp_path / "x.png").exists()


def test_folder_without_events(script: ModuleType, tmp_path: Path) -> None:
    message = refusal(script, "--run", str(tmp_path), "--output", str(tmp_path / "x.png"))
    assert "no TensorBoard event files" in message and "python -m mnist_lightning fit" in message
