"""What a run writes and how commands find it (issues 12 and 14): one folder per run even when runs
start together, evaluation logged into the run it evaluates, the HPARAMS tab, a quiet console, the
printed test command, and resumes and evaluations that refuse settings the checkpoint fixes.

Commands run in this process (`run_cli`) and evaluate the shared trained run (`trained_run`, or a copy
where they write into it), except where the process is the subject: two processes racing for a
folder, what a real console shows, a printed command pasted into a shell."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import PROJECT_ROOT, TINY_ARGS, CliResult, built_once, hparams_row, run_cli, run_process, start_forked
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

TESTS_DIR = Path(__file__).resolve().parent


def _fit(cwd: Path, data: Path, *extra: str, epochs: int = 2) -> CliResult:
    result = run_cli(
        "fit", "--data.data_dir", str(data), *TINY_ARGS, "--trainer.max_epochs", str(epochs), *extra, cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    return result


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def _hparams(run_dir: Path) -> dict[str, object]:
    return hparams_row(run_dir)


def _last(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.ckpt"


# ------------------------------------------------------------------------------ one folder per run
# Two `fit` processes started together, in one folder: the default config on a real console, and the best
# recipe's settings with the opt-in bf16 (configs/bf16.yaml's precision, deskewing). Shared by the race for a
# run folder (between processes) and the two console tests (warnings reach a real console once each, where in
# this process pytest records them): one pair of process starts (5-9 s of CPU each) instead of four. Tests only
# read it.
CONSOLE_FIT = ("--data.verify", "false", "--data.val_size", "100")
TOGETHER = {
    "default": ("--trainer.max_epochs", "2"),
    "best": ("--trainer.max_epochs", "1", "--trainer.precision", "bf16-mixed", "--data.deskew", "true"),
}
LEARNING_RATE = {"default": "0.001", "best": "0.002"}  # what tells the two runs' folders apart


@dataclass(frozen=True)
class FitsStartedTogether:
    workdir: Path
    returncodes: dict[str, int]
    consoles: dict[str, str]  # stdout and stderr of each, as a console shows them

    def run_dir(self, name: str) -> Path:
        """The run folder that `name`'s fit claimed (which of the two is the race's outcome)."""
        lr = float(LEARNING_RATE[name])
        (run_dir,) = [
            d
            for d in (self.workdir / "lightning_logs").iterdir()
            if yaml.safe_load((d / "config.yaml").read_text())["model"]["init_args"]["optimizer"]["init_args"]["lr"]
            == lr
        ]
        return run_dir


@pytest.fixture(scope="session")
def fits_started_together(shared_tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> FitsStartedTogether:
    def build(workdir: Path) -> None:
        runs = {name: start_forked("fit", "--data.data_dir", str(shared_tiny_data), *CONSOLE_FIT, *args,
                                   "--model.optimizer.init_args.lr", LEARNING_RATE[name], cwd=workdir,
                                   log=workdir / f"{name}.console")
                for name, args in TOGETHER.items()}
        for name, run in runs.items():
            (workdir / f"{name}.returncode").write_text(str(run.wait(timeout=300)))

    workdir = built_once(tmp_path_factory, "fits-started-together", build)
    return FitsStartedTogether(workdir, {n: int((workdir / f"{n}.returncode").read_text()) for n in TOGETHER},
                               {n: (workdir / f"{n}.console").read_text() for n in TOGETHER})


@pytest.mark.slow
def test_two_runs_started_together_get_two_consistent_folders(fits_started_together):
    """Two real processes: the race for a run folder is between processes."""
    for name, code in fits_started_together.returncodes.items():
        assert code == 0, fits_started_together.consoles[name][-3000:]
    logs = fits_started_together.workdir / "lightning_logs"
    folders = sorted(p.name for p in logs.iterdir())
    assert folders == ["version_0", "version_1"]
    lrs = set()
    for name in folders:
        run_dir = logs / name
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
        assert config["trainer"]["logger"]["init_args"]["version"] == int(name.removeprefix("version_"))
        assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith("config")) == ["config.yaml"]
        assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # one writer per run
        checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
        assert len(checkpoints) == 2 and "last.ckpt" in checkpoints  # one best, one last, no temporary files
        saved_lr = torch.load(_last(run_dir), weights_only=True)["hyper_parameters"]["optimizer"]["init_args"]["lr"]
        assert (
            saved_lr == config["model"]["init_args"]["optimizer"]["init_args"]["lr"]
        )  # this folder's config's checkpoint
        lrs.add(saved_lr)
    assert lrs == {0.001, 0.002}


# ------------------------------------------------------------------------------ one run, one row (12.4, 12.5)
def test_test_on_a_runs_checkpoint_logs_into_that_run_with_one_hparams_row(trained_run_copy):
    run_dir, workdir = trained_run_copy.run_dir, trained_run_copy.workdir  # a 2-epoch fit of the defaults
    test = run_cli("test", "--ckpt_path", str(_last(run_dir)), "--data.data_dir", str(trained_run_copy.data_dir),
                   *TINY_ARGS, cwd=workdir)
    assert test.returncode == 0, test.stderr
    assert sorted(p.name for p in (workdir / "lightning_logs").iterdir()) == ["version_0"]
    scalars = _events(run_dir).Tags()["scalars"]
    for tag in ("val/acc", "train/acc", "test/acc", "hp/val_acc_best", "hp/test_acc"):
        assert tag in scalars, tag
    params = _hparams(run_dir)
    expected = {
        "model.class": "MNISTClassifier",
        "model.net": "mnist_lightning.models.MLP",
        "model.net.init_args.hidden_sizes": "[50]",
        "model.optimizer": "torch.optim.Adam",
        "model.optimizer.init_args.lr": 0.001,
        "data.dataset": "mnist",
        "data.batch_size": 64.0,
        "data.normalize": "false",
        "data.deskew": "false",
        "data.val_size": 100.0,
        "seed": "42",
        "trainer.max_epochs": 2.0,
        "trainer.precision": "32-true",
        "trainer.devices": 1.0,
    }
    for key, value in expected.items():
        assert params.get(key) == value, (key, params.get(key))
    assert not any(key.startswith("_") or "instantiator" in key for key in params)


def test_hparams_tell_a_fashion_run_from_an_mnist_run(trained_run, tmp_path):
    # The MNIST run is the shared trained run; the Fashion-MNIST one (the same tiny files: a flat folder of
    # IDX files serves any dataset) needs no more than a batch to write its HPARAMS row.
    _fit(tmp_path, trained_run.data_dir, "--data.dataset", "fashion_mnist", "--data.normalize", "true",
         "--trainer.limit_train_batches", "1", "--trainer.limit_val_batches", "1", epochs=1)
    first, second = _hparams(trained_run.run_dir), _hparams(tmp_path / "lightning_logs" / "version_0")
    assert (first["data.dataset"], first["data.normalize"]) == ("mnist", "false")
    assert (second["data.dataset"], second["data.normalize"]) == ("fashion_mnist", "true")


def test_a_checkpoint_from_elsewhere_gets_a_folder_of_its_own_and_predict_writes_none(trained_run, tmp_path):
    tiny_data = trained_run.data_dir
    copy = tmp_path / "model.ckpt"
    copy.write_bytes(trained_run.last.read_bytes())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    test = run_cli("test", "--ckpt_path", str(copy), "--data.data_dir", str(tiny_data), *TINY_ARGS, cwd=elsewhere)
    assert test.returncode == 0, test.stderr
    assert [p.name for p in (elsewhere / "lightning_logs").iterdir()] == ["version_0"]
    predict_dir = tmp_path / "predict"
    predict_dir.mkdir()
    predict = run_cli(
        "predict", "--ckpt_path", str(copy), "--data.data_dir", str(tiny_data), *TINY_ARGS, cwd=predict_dir
    )
    assert predict.returncode == 0, predict.stderr
    assert list(predict_dir.iterdir()) == []


# ------------------------------------------------------------------------------ the newcomer's path (12.1, 12.2, 12.6)
def test_the_test_command_that_fit_prints_works_when_pasted(trained_run_copy):
    """Pasted into a real shell, as a user does: the quoting and the interpreter's name are the subject."""
    line = next(line for line in trained_run_copy.stdout.splitlines() if line.startswith("Test it with: "))
    command = line.removeprefix("Test it with: ")
    assert shlex.split(command)[1:4] == ["-m", "mnist_lightning", "test"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    pasted = subprocess.run(command, shell=True, cwd=trained_run_copy.workdir, env=env, capture_output=True, text=True,
                            timeout=300)
    assert pasted.returncode == 0, pasted.stderr
    assert re.search(r"Got \d+ / 200 with accuracy", pasted.stdout)


def test_predicting_your_own_images_needs_no_dataset_on_disk(trained_run, tmp_path):
    from PIL import Image

    ckpt = tmp_path / "model.ckpt"
    ckpt.write_bytes(trained_run.last.read_bytes())
    images = tmp_path / "mine"
    images.mkdir()
    digit = torch.zeros(28, 28, dtype=torch.uint8)
    digit[8:11, 4:24] = 255  # a bar, like the fake digits of class 3
    Image.fromarray(digit.numpy()).save(images / "bar.png")
    empty = tmp_path / "no_data_here"
    empty.mkdir()
    result = run_cli("predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(images),
                     "--data.data_dir", str(empty / "missing"), "--trainer.enable_progress_bar", "false", cwd=empty)
    assert result.returncode == 0, result.stderr
    assert "bar.png" in result.stdout
    assert list(empty.iterdir()) == []  # nothing downloaded, no log folder


def test_the_console_of_fit_shows_progress_and_results_only(fits_started_together, shared_tiny_data, tmp_path):
    """Real processes (the default fit of `fits_started_together`, then a predict): warnings reach a real
    console once each, where in this process pytest records them (and an earlier test may already have shown them)."""
    assert fits_started_together.returncodes["default"] == 0, fits_started_together.consoles["default"][-3000:]
    console = fits_started_together.consoles["default"]
    for noise in ("weights_only", "Tip:", "litlogger", "LeafSpec", "Warning", "warn"):
        assert noise not in console, noise
    assert "Epoch 1" in console and "Best checkpoint" in console and "Test it with" in console
    run_dir = fits_started_together.run_dir("default")
    shutil.copytree(
        run_dir, tmp_path / "lightning_logs" / run_dir.name
    )  # predict reads it here, the shared one stays as it was
    predict = run_process("predict", "--ckpt_path", str(_last(tmp_path / "lightning_logs" / run_dir.name)),
                          "--data.data_dir", str(shared_tiny_data), "--data.verify", "false", cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    assert "dirpath has changed" not in predict.stdout + predict.stderr and "Warning" not in predict.stderr


def test_the_best_recipes_settings_keep_the_console_quiet(fits_started_together):
    """configs/bf16.yaml's precision and mlp_best.yaml's deskewing add no warnings to what fit prints (on a CPU
    that emulates bf16, PrecisionCheck's one line, tests/test_precision_check.py, names no warning).
    A real process (the "best" fit of `fits_started_together`), for the reason above."""
    assert fits_started_together.returncodes["best"] == 0, fits_started_together.consoles["best"][-3000:]
    console = fits_started_together.consoles["best"]
    for noise in ("Warning", "warn", "not supported"):
        assert noise not in console, noise
    assert "Best checkpoint" in console


# ------------------------------------------------------------------------------ resume keeps what the checkpoint fixes
@pytest.fixture(scope="module")
def onecycle_run(tmp_path_factory: pytest.TempPathFactory, shared_tiny_data: Path) -> Path:
    """A 2-epoch fit with a schedule that spans the run, trained once for the refusals below (which write nothing)."""
    workdir = tmp_path_factory.mktemp("onecycle")
    _fit(workdir, shared_tiny_data, "--model.lr_scheduler", "mnist_lightning.models.OneCycle")
    return workdir


@pytest.fixture
def onecycle_run_copy(onecycle_run: Path, tmp_path: Path) -> Path:
    """A private copy of `onecycle_run`'s run folder (its working folder is `tmp_path`), should a refusal fail."""
    shutil.copytree(onecycle_run / "lightning_logs", tmp_path / "lightning_logs")
    return tmp_path / "lightning_logs" / "version_0"


@pytest.mark.parametrize(("option", "value", "saved"), [
    ("--model.optimizer.init_args.lr", "0.01", "0.001"), ("--data.batch_size", "128", "64"),
    ("--data.split_seed", "7", "42"), ("--data.val_size", "50", "100"),
    ("--model.net.init_args.hidden_sizes", "[20]", "[50]"), ("--seed_everything", "3", "42"),
    ("--model.lr_scheduler", "mnist_lightning.models.Cosine", "'mnist_lightning.models.OneCycle'"),
    ("--trainer.max_epochs", "4", "2"), ("--data.deskew", "true", "False"),
])
def test_a_resume_with_a_setting_the_checkpoint_fixes_is_refused_naming_both_values(option, value, saved,
                                                                                     onecycle_run_copy, tmp_path):
    run_dir = onecycle_run_copy
    before = _last(run_dir).read_bytes()
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last", option, value,
                     cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    setting = option.removeprefix("--")
    assert f"{setting}=" in result.stderr and saved in result.stderr, result.stderr
    assert _last(run_dir).read_bytes() == before


@pytest.mark.parametrize("option", [("--trainer.limit_train_batches", "3"), ("--trainer.accumulate_grad_batches", "2"),
                                    ("--trainer.max_steps", "5"),
                                    ("--trainer.accumulate_grad_batches", "4")])  # 4 steps: torch's OneCycleLR fails
def test_a_resume_that_changes_a_run_long_schedules_length_is_refused(option, onecycle_run_copy, tmp_path):
    """Each of these changes how many optimizer steps the one-cycle schedule spans: more would overrun it (torch's
    "Tried to step N times"), fewer would end half-way through it. Refused in one line, nothing written, before
    the schedule is built (a length torch cannot build one of would fail there first)."""
    run_dir = onecycle_run_copy
    before = _last(run_dir).read_bytes()
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last", *option, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.stderr
    assert "the checkpoint's schedule spans" in result.stderr and "resume with the run's own settings" in result.stderr
    assert _last(run_dir).read_bytes() == before


def test_a_resume_may_change_the_number_of_epochs_of_a_constant_rate_and_logging(trained_run_copy):
    run_dir = trained_run_copy.run_dir  # 2 epochs at Adam's constant rate
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                     "--trainer.max_epochs", "3", "--trainer.log_every_n_steps", "5", cwd=trained_run_copy.workdir)
    assert result.returncode == 0, result.stderr
    assert torch.load(_last(run_dir), weights_only=True)["epoch"] == 2


# ------------------------------------------------------------------------------ evaluation keeps the run's split
def test_validate_reproduces_fits_val_acc_with_a_non_default_split(shared_tiny_data, tmp_path):
    tiny_data = shared_tiny_data
    _fit(tmp_path, tiny_data, "--data.split_seed", "7", "--data.val_size", "150", epochs=1)
    run_dir = tmp_path / "lightning_logs" / "version_0"
    fit_acc = [e.value for e in _events(run_dir).Scalars("val/acc")][-1]
    result = run_cli("validate", "--ckpt_path", str(_last(run_dir)), "--data.data_dir", str(tiny_data),
                     "--data.verify", "false", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    validated = float(re.search(r"validate/acc\s+([0-9.]+)", result.stdout).group(1))
    assert validated == pytest.approx(fit_acc, abs=1e-6)
    for option, value in (("--data.split_seed", "42"), ("--data.normalize", "true")):
        refused = run_cli("validate", "--ckpt_path", str(_last(run_dir)), "--data.data_dir", str(tiny_data),
                          "--data.verify", "false", option, value, cwd=tmp_path)
        assert refused.returncode == 2 and option.removeprefix("--") in refused.stderr


# ------------------------------------------------------------------------------ evaluating nothing
@pytest.mark.parametrize("subcommand", ["test", "validate", "predict"])
def test_evaluating_without_a_checkpoint_is_refused_unless_asked_for(subcommand, shared_tiny_data, tmp_path):
    tiny_data = shared_tiny_data
    result = run_cli(subcommand, "--data.data_dir", str(tiny_data), *TINY_ARGS, cwd=tmp_path)
    assert result.returncode == 2 and "--ckpt_path" in result.stderr and "Traceback" not in result.stderr
    assert "Got " not in result.stdout
    allowed = run_cli(
        subcommand, "--data.data_dir", str(tiny_data), *TINY_ARGS, "--allow_untrained", "true", cwd=tmp_path
    )
    assert allowed.returncode == 0, allowed.stderr


def test_ckpt_path_last_without_the_runs_config_is_refused(trained_run_copy):
    result = run_cli("test", "--ckpt_path", "last", "--data.data_dir", str(trained_run_copy.data_dir), *TINY_ARGS,
                     cwd=trained_run_copy.workdir)
    assert result.returncode == 2 and "config.yaml" in result.stderr and "Got " not in result.stdout


# ------------------------------------------------------------------------------ several loggers, one run folder
TWO_LOGGERS = """trainer:
  logger:
    - class_path: pytorch_lightning.loggers.TensorBoardLogger
      init_args: {save_dir: lightning_logs, name: "", default_hp_metric: false}
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {save_dir: lightning_logs, name: ""}
"""


def test_two_loggers_write_into_one_run_folder_and_its_evaluation_stays_there(shared_tiny_data, tmp_path):
    (tmp_path / "two_loggers.yaml").write_text(TWO_LOGGERS)
    for _ in range(2):
        _fit(tmp_path, shared_tiny_data, "--config", "two_loggers.yaml", epochs=1)
    runs = tmp_path / "lightning_logs"
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]
    for run in ("version_0", "version_1"):
        assert (runs / run / "metrics.csv").is_file() and list((runs / run).glob("events.out.tfevents.*")), run
    result = run_cli("test", "--ckpt_path", str(_last(runs / "version_0")), "--data.data_dir", str(shared_tiny_data),
                     *TINY_ARGS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in runs.iterdir()) == ["version_0", "version_1"]  # no new version for the test
    assert "test/acc" in (runs / "version_0" / "metrics.csv").read_text()
