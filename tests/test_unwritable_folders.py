"""A folder the command cannot write (a read-only file system) is one line naming it and the fix, and nothing
already saved changes; a logger whose package is missing is one line too."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import TINY_ARGS, TrainedRun, run_cli


@contextmanager
def read_only_mount(folder: Path, fill: Path | None = None) -> Iterator[Path]:
    """`folder` as a read-only tmpfs (with a copy of `fill` inside), unmounted afterwards. Root ignores file
    permissions, so a read-only file system is how these tests make a folder unwritable."""
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        if fill is not None:
            shutil.copytree(fill, folder / fill.name)
        subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def one_line_error(result, *fragments: str) -> str:
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]), result.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("where", [("--trainer.logger.init_args.save_dir", "ro/logs"),
                                   ("--trainer.logger", "false", "--trainer.default_root_dir", "ro/runs")])
def test_fit_into_a_read_only_folder_is_one_line(shared_tiny_data: Path, tmp_path: Path, where) -> None:
    with read_only_mount(tmp_path / "ro"):
        result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "1",
                         *where, cwd=tmp_path)
    one_line_error(result, "cannot write", "Read-only file system", "choose a folder you can write to")


@pytest.mark.parametrize("evaluation", [("test",), ("validate",), ("test", "--trainer.logger", "false")])
def test_an_evaluation_of_a_run_in_a_read_only_folder_is_one_line_and_the_run_is_unchanged(
        trained_run: TrainedRun, tmp_path: Path, evaluation: tuple[str, ...]) -> None:
    """Refused naming the run's folder before any logger opens a file in it (TensorBoard's writer thread
    would die there with a traceback of its own, beside the error)."""
    with read_only_mount(tmp_path / "ro", fill=trained_run.workdir / "lightning_logs") as ro:
        run = ro / "lightning_logs" / "version_0"
        before = sorted(p.name for p in run.rglob("*"))
        result = run_cli(*evaluation, "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--data.data_dir",
                         str(trained_run.data_dir), *TINY_ARGS, cwd=tmp_path)
        assert sorted(p.name for p in run.rglob("*")) == before
    one_line_error(result, f"cannot write {run} (Read-only file system)")


def test_export_into_a_read_only_folder_is_one_line(trained_run: TrainedRun, tmp_path: Path) -> None:
    with read_only_mount(tmp_path / "ro"):
        result = run_cli("export", "--ckpt_path", str(trained_run.last), "--format", "torchscript",
                         "--output", str(tmp_path / "ro" / "model.pt"), cwd=tmp_path)
    one_line_error(result, "could not write torchscript export", "read-only")


def test_a_logger_without_its_package_is_one_line(shared_tiny_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("pytorch_lightning.loggers")
    try:
        import mlflow  # noqa: F401
        pytest.skip("mlflow is installed: the case needs a logger whose package is missing")
    except ImportError:
        pass
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.logger",
                     "pytorch_lightning.loggers.MLFlowLogger", cwd=tmp_path)
    one_line_error(result, "needs a package that is not installed", "mlflow")
    assert not (tmp_path / "lightning_logs").exists()
