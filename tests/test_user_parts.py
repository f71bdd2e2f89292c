"""A user's own parts: a net written in the user's own file, outside
the package, and any torch optimizer and schedule, all by class path on the command line. Every
safeguard works for them as for the default MLP: the printed test command, predict, load_from_checkpoint,
ONNX export parity, the HPARAMS row, a resume's refusal of a changed setting.

Through the real entry point (`run_cli`: main() in this process); the user's folder is on PYTHONPATH,
as a user puts it there."""

from __future__ import annotations

import re
import shlex
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_ARGS, TrainedRun, hparams_row, run_cli

EPOCHS = 2
BASE_LR, GAMMA = 0.05, 0.5

MY_NETS = '''"""A user's nets, in a file of their own: nothing of mnist_lightning is imported."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Two conv-ReLU-pool blocks, then a linear layer to the classes."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.width = width
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


class OnlyClasses(nn.Module):
    """The smallest net a user writes: its one setting is the number of classes."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.head = nn.Linear(28 * 28, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class NoClasses(nn.Module):
    """A net the CLI cannot size: it takes no num_classes."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.head = nn.Linear(28 * 28, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x.flatten(1))


class WithFeatures(nn.Module):
    """A common pattern the module cannot train: it returns (logits, features)."""

    def __init__(self, width: int = 8, num_classes: int = 10):
        super().__init__()
        self.body = nn.Linear(28 * 28, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x.flatten(1)).relu()
        return self.head(features), features
'''

USER_PARTS = ("--model.net", "my_nets.SmallCNN", "--model.net.init_args.width", "16",
              "--model.optimizer", "torch.optim.SGD", "--model.optimizer.init_args.lr", str(BASE_LR),
              "--model.lr_scheduler", "torch.optim.lr_scheduler.StepLR",
              "--model.lr_scheduler.init_args.step_size", "1", "--model.lr_scheduler.init_args.gamma", str(GAMMA))


@dataclass(frozen=True)
class UserRun(TrainedRun):
    """A finished fit of the user's net, with the folder that holds `my_nets.py`."""

    user_dir: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.user_dir)}

    def copy_to(self, folder: Path) -> UserRun:
        """A private copy (run folder and all), for a test that adds to the run or might."""
        shutil.copytree(self.workdir / "lightning_logs", folder / "lightning_logs")
        return UserRun(folder, self.data_dir, self.stdout, self.user_dir)


def write_user_nets(folder: Path) -> Path:
    """`my_nets.py` in a folder of its own, outside the package, as a user keeps it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_nets.py").write_text(MY_NETS)
    return folder


@pytest.fixture(scope="module")
def user_run(tmp_path_factory: pytest.TempPathFactory, shared_tiny_data: Path) -> UserRun:
    """One fit of `my_nets.SmallCNN` (width 16) with SGD and a StepLR schedule, shared by this file's tests:
    each part is the user's choice, and each test below reads what one of them left in the run."""
    root = tmp_path_factory.mktemp("user_parts")
    user_dir = write_user_nets(root / "user")
    workdir = root / "work"
    workdir.mkdir()
    fit = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", str(EPOCHS),
                  *USER_PARTS, cwd=workdir, env={"PYTHONPATH": str(user_dir)})
    assert fit.returncode == 0, fit.stderr
    return UserRun(workdir, shared_tiny_data, fit.stdout, user_dir)


@pytest.fixture
def my_nets(user_run: UserRun, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The user's module imported in this process, as `load_from_checkpoint` needs it; removed afterwards,
    so no later test finds this folder's `my_nets` in sys.modules."""
    monkeypatch.syspath_prepend(str(user_run.user_dir))
    sys.modules.pop("my_nets", None)  # another test's my_nets, should one be left over
    import my_nets

    assert Path(my_nets.__file__).parent == user_run.user_dir
    yield my_nets
    for name, module in list(sys.modules.items()):
        if (getattr(module, "__file__", None) or "").startswith(str(user_run.user_dir)):
            del sys.modules[name]


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _hparams(run_dir: Path) -> dict[str, object]:
    return hparams_row(run_dir)


def test_a_net_of_the_users_own_trains_from_its_class_path(user_run):
    checkpoint = _checkpoint(user_run.last)
    assert checkpoint["hyper_parameters"]["net"] == {"class_path": "my_nets.SmallCNN",
                                                     "init_args": {"width": 16, "num_classes": 10}}
    assert checkpoint["state_dict"]["net.features.0.weight"].shape == (16, 1, 3, 3)  # width 16, not the default 8
    assert checkpoint["epoch"] == EPOCHS - 1
    saved = yaml.safe_load((user_run.run_dir / "config.yaml").read_text())
    assert saved["model"]["init_args"]["net"] == {"class_path": "my_nets.SmallCNN", "init_args": {"width": 16}}


def test_the_test_command_that_fit_prints_runs_for_a_users_net(user_run, tmp_path):
    run = user_run.copy_to(tmp_path)  # `test` logs into the run it evaluates
    line = next(line for line in run.stdout.splitlines() if line.startswith("Test it with: "))
    command = shlex.split(line.removeprefix("Test it with: "))
    assert command[1:3] == ["-m", "mnist_lightning"], command
    result = run_cli(*command[3:], cwd=run.workdir, env=run.env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"Got \d+ / 200 with accuracy", result.stdout), result.stdout


def test_predict_with_a_users_net_predicts_every_image_of_a_folder(user_run, tmp_path):
    from PIL import Image

    images = tmp_path / "digits"
    images.mkdir()
    names = []
    for k in (0, 3, 7):
        digit = torch.zeros(28, 28, dtype=torch.uint8)
        digit[2 + 2 * k : 5 + 2 * k, 4:24] = 255  # a bar where the fake digits of class k have it
        names.append(f"bar{k}.png")
        Image.fromarray(digit.numpy()).save(images / names[-1])
    result = run_cli("predict", "--ckpt_path", str(user_run.last), "--data.predict_path", str(images),
                     "--trainer.enable_progress_bar", "false", cwd=tmp_path, env=user_run.env)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if ".png" in line]
    assert len(rows) == len(names), result.stdout
    for name in names:
        assert any(re.search(rf"{re.escape(name)}\s+\d\s+[0-9.]+$", row) for row in rows), (name, result.stdout)


def test_load_from_checkpoint_rebuilds_the_users_net_with_its_settings_and_weights(user_run, my_nets):
    from mnist_lightning import MNISTClassifier

    model = MNISTClassifier.load_from_checkpoint(user_run.last, map_location="cpu")
    assert type(model.net) is my_nets.SmallCNN and model.net.width == 16
    saved = _checkpoint(user_run.last)["state_dict"]
    own = model.state_dict()
    assert own.keys() == saved.keys()
    assert all(torch.equal(own[key], saved[key]) for key in saved)


@pytest.mark.slow  # the ONNX exporter takes seconds
def test_an_onnx_export_of_a_users_net_matches_the_checkpoint(user_run, my_nets, tmp_path):
    import onnxruntime

    from mnist_lightning import MNISTClassifier

    output = tmp_path / "small_cnn.onnx"
    result = run_cli("export", "--ckpt_path", str(user_run.last), "--format", "onnx", "--output", str(output),
                     cwd=tmp_path, env=user_run.env)
    assert result.returncode == 0, result.stderr
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    x = torch.rand(37, 1, 28, 28, generator=torch.Generator().manual_seed(3))  # not the batch size it exported with
    exported = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    model = MNISTClassifier.load_from_checkpoint(user_run.last, map_location="cpu").eval()
    with torch.no_grad():
        expected = model(x)
    assert exported.shape == expected.shape == (37, 10)
    assert float((exported - expected).abs().max()) < 1e-4


def test_the_short_form_of_a_users_net_setting_parses(user_run, tmp_path):
    result = run_cli("fit", "--model.net", "my_nets.SmallCNN", "--model.net.width", "16", "--print_config",
                     cwd=tmp_path, env=user_run.env)
    assert result.returncode == 0, result.stderr
    net = yaml.safe_load(result.stdout)["model"]["init_args"]["net"]
    assert net["class_path"] == "my_nets.SmallCNN" and net["init_args"]["width"] == 16


def test_a_net_without_num_classes_is_refused_with_one_line_naming_it(user_run, tmp_path):
    result = run_cli("fit", "--data.data_dir", str(user_run.data_dir), *TINY_ARGS, "--model.net", "my_nets.NoClasses",
                     cwd=tmp_path, env=user_run.env)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr  # one line: no traceback
    assert result.stderr.startswith("error: ") and "NoClasses" in result.stderr and "num_classes" in result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_a_net_that_returns_a_tuple_is_refused_with_one_line_before_training(user_run, tmp_path):
    result = run_cli("fit", "--data.data_dir", str(user_run.data_dir), *TINY_ARGS,
                     "--model.net", "my_nets.WithFeatures", cwd=tmp_path, env=user_run.env)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().endswith(errors[0]) and "Traceback" not in result.stderr
    assert "model.net returns a tuple, not a tensor" in result.stderr and "only the logits" in result.stderr
    assert not list(tmp_path.glob("lightning_logs/version_*"))  # refused before the first step: no run folder left


def test_a_net_whose_only_argument_is_num_classes_is_refused_in_one_line(user_run, tmp_path):
    """LightningCLI 2.6 cannot save the config of a net whose only argument is the linked num_classes (it asserts
    in pytorch_lightning.cli._set_dict_nested): the CLI says so, and what to do, before anything is built."""
    result = run_cli("fit", "--data.data_dir", str(user_run.data_dir), *TINY_ARGS, "--trainer.fast_dev_run", "true",
                     "--model.net", "my_nets.OnlyClasses", cwd=tmp_path, env=user_run.env)
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.net my_nets.OnlyClasses takes num_classes and nothing else"), result.stderr
    assert "Traceback" not in result.stderr and "one more argument" in last


def test_an_optimizer_given_by_class_path_is_the_runs_and_its_hparams_row(user_run):
    optimizer = _checkpoint(user_run.last)["hyper_parameters"]["optimizer"]
    assert optimizer["class_path"] == "torch.optim.SGD" and optimizer["init_args"]["lr"] == BASE_LR
    params = _hparams(user_run.run_dir)
    assert params.get("model.optimizer") == "torch.optim.SGD", params
    assert params.get("model.optimizer.init_args.lr") == BASE_LR, params
    assert params.get("model.net") == "my_nets.SmallCNN" and params.get("model.net.init_args.width") == 16, params


def test_a_schedule_given_by_class_path_really_steps(user_run):
    """StepLR (step_size 1, gamma 0.5) from SGD's lr 0.05: halved after each epoch. The optimizer's state
    says so too (SGD's keys, not Adam's), so the optimizer's class path reached the optimizer."""
    checkpoint = _checkpoint(user_run.last)
    assert checkpoint["hyper_parameters"]["lr_scheduler"]["class_path"] == "torch.optim.lr_scheduler.StepLR"
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert all("nesterov" in group and "betas" not in group for group in groups)
    assert [group["lr"] for group in groups] == pytest.approx([BASE_LR * GAMMA**EPOCHS] * len(groups), rel=1e-12)
    assert _hparams(user_run.run_dir).get("model.lr_scheduler") == "torch.optim.lr_scheduler.StepLR"


def test_a_resume_refuses_a_changed_setting_of_a_users_net(user_run, tmp_path):
    run = user_run.copy_to(tmp_path)
    before = run.last.read_bytes()
    result = run_cli("fit", "--config", str(run.run_dir / "config.yaml"), "--ckpt_path", "last",
                     "--model.net.init_args.width", "8", cwd=run.workdir, env=run.env)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert ("model.net.init_args.width=8" in result.stderr
            and "model.net.init_args.width=16" in result.stderr), result.stderr
    assert run.last.read_bytes() == before
    assert sorted(p.name for p in (run.workdir / "lightning_logs").iterdir()) == ["version_0"]
