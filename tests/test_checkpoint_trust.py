"""A checkpoint is data, never code: a crafted checkpoint whose saved parts name a function (or a class of
the wrong kind) is refused before anything is built, by every command and by `load_from_checkpoint`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import TINY_ARGS, TrainedRun, run_cli
from torch import nn

from mnist_lightning.checkpoints.trust import check_saved_parts
from mnist_lightning.errors import CheckpointError
from mnist_lightning.models.classifier import MNISTClassifier


def _touch(marker: Path) -> str:
    return f"touch {marker}"


def payloads(marker: Path) -> dict[str, tuple[str, Any, str]]:
    """Each crafted slot: (hyper_parameters key, its value, the class path the refusal must name)."""
    return {
        "optimizer": ("optimizer", {"class_path": "subprocess.getoutput", "init_args": {"cmd": _touch(marker)}},
                      "subprocess.getoutput"),
        "lr_scheduler": ("lr_scheduler", {"class_path": "os.system", "init_args": {"command": _touch(marker)}},
                         "os.system"),
        # A class, but not of the slot's kind: constructing it would run the command.
        "lr_scheduler_popen": ("lr_scheduler", {"class_path": "subprocess.Popen",
                                                "init_args": {"args": _touch(marker), "shell": True}},
                               "subprocess.Popen"),
        "net": ("net", {"class_path": "subprocess.getoutput", "init_args": {"cmd": _touch(marker)}},
                "subprocess.getoutput"),
        "instantiator": ("_instantiator", "os.system", "os.system"),
        "model_class": ("_class_path", "subprocess.Popen", "subprocess.Popen"),
    }


def craft(source: Path, target: Path, key: str, value: Any) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    checkpoint["hyper_parameters"][key] = value
    torch.save(checkpoint, target)
    torch.load(target, weights_only=True)  # plain data: the weights-only loader accepts it
    return target


@pytest.fixture
def crafted_dir(trained_run: TrainedRun, tmp_path: Path) -> Path:
    """A copy of the trained run's folder (config.yaml beside it), where crafted checkpoints are written."""
    run = tmp_path / "lightning_logs" / "version_0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_bytes((trained_run.run_dir / "config.yaml").read_bytes())
    return run / "checkpoints"


COMMANDS = {
    "test": lambda ckpt, data: ("test", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *TINY_ARGS),
    "validate": lambda ckpt, data: ("validate", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *TINY_ARGS),
    "predict": lambda ckpt, data: ("predict", "--ckpt_path", str(ckpt), "--data.predict_path", str(data),
                                   "--trainer.enable_progress_bar", "false"),
    "resume": lambda ckpt, data: ("fit", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *TINY_ARGS,
                                  "--trainer.max_epochs", "3"),
    "export": lambda ckpt, data: ("export", "--ckpt_path", str(ckpt), "--format", "torchscript"),
}


@pytest.mark.parametrize("slot", ["optimizer", "lr_scheduler", "lr_scheduler_popen", "net", "instantiator",
                                  "model_class"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_a_checkpoint_that_names_code(trained_run: TrainedRun, crafted_dir: Path, tmp_path: Path,
                                                            command: str, slot: str) -> None:
    marker = tmp_path / "pwned"
    key, value, class_path = payloads(marker)[slot]
    ckpt = craft(trained_run.last, crafted_dir / "crafted.ckpt", key, value)
    predict_dir = tmp_path / "images"
    predict_dir.mkdir()
    data = predict_dir if command == "predict" else trained_run.data_dir
    if command == "predict":
        from PIL import Image

        Image.new("L", (28, 28), 0).save(predict_dir / "blank.png")
    result = run_cli(*COMMANDS[command](ckpt, data), cwd=tmp_path)
    assert not marker.exists(), f"{command} ran the checkpoint's {slot} payload"
    assert result.returncode == 2, result.stderr
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error:"), result.stderr
    assert class_path in error[0] and "refused" in error[0], error[0]


@pytest.mark.parametrize("slot", ["optimizer", "lr_scheduler", "lr_scheduler_popen", "net", "instantiator",
                                  "model_class"])
def test_load_from_checkpoint_refuses_a_checkpoint_that_names_code(trained_run: TrainedRun, tmp_path: Path,
                                                                   slot: str) -> None:
    marker = tmp_path / "pwned"
    key, value, class_path = payloads(marker)[slot]
    ckpt = craft(trained_run.last, tmp_path / "crafted.ckpt", key, value)
    with pytest.raises(CheckpointError, match=class_path.replace(".", r"\.")):
        MNISTClassifier.load_from_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=class_path.replace(".", r"\.")), ckpt.open("rb") as stream:
        MNISTClassifier.load_from_checkpoint(stream)
    assert not marker.exists()


def test_a_trusted_checkpoint_still_loads_with_its_parts(trained_run: TrainedRun) -> None:
    model = MNISTClassifier.load_from_checkpoint(trained_run.last)
    assert isinstance(model.net, nn.Module)
    assert isinstance(model.optimizer_factory([nn.Parameter(torch.zeros(1))]), torch.optim.Optimizer)


class NetWithActivation(nn.Module):
    """A user's net with a nested part: its activation is a class path too."""

    def __init__(self, activation: nn.Module | None = None, num_classes: int = 10):
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, num_classes), activation or nn.Identity())


def test_nested_parts_are_checked_against_their_own_slot() -> None:
    net = {"class_path": f"{__name__}.NetWithActivation",
           "init_args": {"activation": {"class_path": "torch.nn.ReLU"}, "num_classes": 10}}
    check_saved_parts({"hyper_parameters": {"net": net}}, MNISTClassifier)  # a layer where a layer goes: fine
    net["init_args"]["activation"] = {"class_path": "subprocess.Popen", "init_args": {"args": "true"}}
    with pytest.raises(CheckpointError, match=r"model\.net\.init_args\.activation names subprocess\.Popen"):
        check_saved_parts({"hyper_parameters": {"net": net}}, MNISTClassifier)


def test_data_settings_are_checked_against_the_data_module() -> None:
    from mnist_lightning.data.datamodule import MNISTDataModule

    crafted = {"hyper_parameters": {}, "datamodule_hyper_parameters": {
        "augment": {"class_path": "os.system", "init_args": {"command": "true"}}}}
    with pytest.raises(CheckpointError, match=r"data\.augment names os\.system"):
        check_saved_parts(crafted, MNISTClassifier, MNISTDataModule)


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.getoutput"])
def test_a_function_in_a_class_slot_is_called_a_function(class_path: str) -> None:
    """A builtin (`os.system`) and a Python function are both named for what they are to the user: functions."""
    crafted = {"hyper_parameters": {"optimizer": {"class_path": class_path, "init_args": {}}}}
    with pytest.raises(CheckpointError, match=f"names {class_path}, which is refused: it is a function, not a class"):
        check_saved_parts(crafted, MNISTClassifier)
