"""Export: TorchScript and ONNX files that take a float batch (N, 1, 28, 28) of any N and return the
checkpoint's logits within 1e-5, whatever the module class or the net; bad inputs are one clear message
and exit code 2."""

from __future__ import annotations

import errno
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import PROJECT_ROOT, TINY_ARGS, TrainedRun, run_cli

from mnist_lightning import __main__ as entry_point
from mnist_lightning import atomic, export
from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.fast import FastMNISTClassifier
from mnist_lightning.models.mlp import MLP

TOLERANCE = 1e-5
CNN_MODULE = "export_test_cnn"  # a user's own net: a module outside the package, found on PYTHONPATH
CNN_SOURCE = '''
"""A user's small CNN, not an MLP: the export must not assume the default net."""
import torch
from torch import nn


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 4):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(4))
        self.head = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))
'''


def _fit(workdir: Path, data: Path, *extra: str, config: Path | None = None, env: dict | None = None) -> Path:
    """One epoch on the shared tiny data in `workdir` (`config` stacked first); its last checkpoint."""
    stacked = ("--config", str(config)) if config is not None else ()
    result = run_cli("fit", *stacked, "--data.data_dir", str(data), *TINY_ARGS, "--trainer.max_epochs", "1", *extra,
                     cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def _test_images(data: Path, normalize: bool = False) -> torch.Tensor:
    """The tiny test images, scaled as a run with `normalize` scales them."""
    dm = MNISTDataModule(data_dir=str(data), verify=False, normalize=normalize)
    dm.setup("test")
    return dm.test_set.__getitems__(list(range(len(dm.test_set))))[0]


def _torchscript(path: Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        return torch.jit.load(str(path))


def _onnx_runner(path: Path):
    """The .onnx file as a function of a batch, through onnxruntime; skips the test without it."""
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the optional dependency for the ONNX check")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)  # a dynamic batch dimension
    return lambda x: torch.from_numpy(session.run([out.name], {inp.name: x.numpy()})[0])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_tiny_data: Path) -> tuple[Path, Path]:
    """(data folder, checkpoint) of a net where eval mode matters: batch norm and dropout, two hidden layers,
    normalised input. (The shared default run has none of these.)"""
    ckpt = _fit(tmp_path_factory.mktemp("export"), shared_tiny_data, "--model.net.init_args.hidden_sizes", "[32, 16]",
                "--model.net.init_args.batch_norm", "true", "--model.net.init_args.dropout", "0.3",
                "--data.normalize", "true")
    return shared_tiny_data, ckpt


@pytest.fixture(scope="module")
def reference(trained) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny test images, as the run scaled them, and the logits of the checkpoint's weights in an MLP
    built here by hand (not by the export's loading code), in eval mode."""
    data, ckpt = trained
    checkpoint = load_checkpoint_file(ckpt)
    saved_net = checkpoint["hyper_parameters"]["net"]
    assert saved_net["class_path"] == "mnist_lightning.models.MLP", saved_net
    net = MLP(**saved_net["init_args"])
    net.load_state_dict({k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items()
                         if k.startswith("net.")})
    images = _test_images(data, normalize=True)
    with torch.no_grad():
        return images, net.eval()(images)


def _export(workdir: Path, *args: str, env: dict | None = None):
    return run_cli("export", *args, cwd=workdir, env=env)


def test_torchscript_reproduces_the_checkpoint(trained, reference, tmp_path: Path) -> None:
    _, ckpt = trained
    result = _export(tmp_path, "--ckpt_path", str(ckpt), "--format", "torchscript", "--output", "out/mnist.pt")
    assert result.returncode == 0, result.stderr
    assert "Wrote torchscript model out/mnist.pt" in result.stdout
    assert "(pixels / 255 - 0.1307) / 0.3081" in result.stdout  # the run normalised: the export says so
    images, logits = reference
    model = _torchscript(tmp_path / "out" / "mnist.pt")
    with torch.no_grad():
        for batch in (1, 7, len(images)):
            assert torch.allclose(model(images[:batch]), logits[:batch], atol=TOLERANCE, rtol=0), batch


def test_onnx_reproduces_the_checkpoint(trained, reference, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="onnxruntime is the optional dependency for the ONNX check")
    _, ckpt = trained
    result = _export(tmp_path, "--ckpt_path", str(ckpt), "--format", "onnx", "--output", "mnist.onnx")
    assert result.returncode == 0, result.stderr
    assert "logits match the checkpoint's" in result.stdout
    run = _onnx_runner(tmp_path / "mnist.onnx")
    images, logits = reference
    for batch in (1, 7, len(images)):
        assert torch.allclose(run(images[:batch]), logits[:batch], atol=TOLERANCE, rtol=0), batch


def test_output_defaults_to_beside_the_checkpoint(trained_run: TrainedRun, tmp_path: Path) -> None:
    copy = tmp_path / "run.ckpt"
    copy.write_bytes(trained_run.last.read_bytes())
    written = export.export(copy, "torchscript")
    assert written == tmp_path / "run.pt" and written.stat().st_size > 0


def test_bad_inputs_are_clean_errors(trained_run: TrainedRun, tmp_path: Path, capsys) -> None:
    ckpt = trained_run.last
    missing = _export(tmp_path, "--ckpt_path", "nowhere.ckpt", "--format", "onnx", "--output", "m.onnx")
    assert missing.returncode == 2 and "error: checkpoint nowhere.ckpt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "m.onnx").exists()
    (tmp_path / "half.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for args, message in (
        (["--ckpt_path", str(tmp_path / "half.ckpt"), "--format", "torchscript"], "half.ckpt is truncated or corrupt"),
        (["--ckpt_path", str(ckpt), "--format", "tflite"], "invalid choice: 'tflite'"),
        (["--format", "onnx"], "the following arguments are required: --ckpt_path"),
    ):
        assert entry_point.main(["export", *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "half.pt").exists()


def test_missing_onnx_package_is_a_clean_error(trained_run: TrainedRun, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: importing it raises ImportError
    args = ["--ckpt_path", str(trained_run.last), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    assert entry_point.main(["export", *args]) == 2
    assert 'pip install -e ".[onnx]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------- never over the input
def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_export_onto_its_own_checkpoint_is_refused_and_it_stays_unchanged(trained_run: TrainedRun, tmp_path: Path,
                                                                         monkeypatch, capsys) -> None:
    model = tmp_path / "model.pt"  # a checkpoint named like a TorchScript file
    model.write_bytes(trained_run.last.read_bytes())
    (tmp_path / "link.onnx").symlink_to(model)
    (tmp_path / "sub").mkdir()
    before = model.read_bytes()
    # From the command line: the default output name, and a link to the checkpoint.
    _one_line_error(_export(tmp_path, "--ckpt_path", "model.pt", "--format", "torchscript"),
                    "the default output model.pt (the checkpoint's name with .pt) is the checkpoint",
                    "pass another --output")
    _one_line_error(_export(tmp_path, "--ckpt_path", "model.pt", "--format", "onnx", "--output", "link.onnx"),
                    "--output link.onnx is the checkpoint model.pt itself", "pass another --output")
    # The same path spelled differently, in process.
    monkeypatch.chdir(tmp_path)
    for output in (str(model), "./sub/../model.pt"):
        assert entry_point.main(["export", "--ckpt_path", "model.pt", "--format", "onnx", "--output", output]) == 2
        assert "is the checkpoint" in capsys.readouterr().err
    assert model.read_bytes() == before and (tmp_path / "link.onnx").resolve() == model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.onnx", "model.pt", "sub"]  # no logs, no temp files


def test_output_folder_and_empty_checkpoints_are_one_line_errors(trained_run: TrainedRun, tmp_path: Path) -> None:
    (tmp_path / "exports").mkdir()
    _one_line_error(_export(tmp_path, "--ckpt_path", str(trained_run.last), "--format", "onnx", "--output", "exports"),
                    "--output exports is a folder", "exports/model.onnx")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _one_line_error(_export(tmp_path, "--ckpt_path", "empty.ckpt", "--format", "torchscript"), "empty.ckpt is empty")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    _one_line_error(_export(tmp_path, "--ckpt_path", "bare.ckpt", "--format", "torchscript"),
                    "bare.ckpt is not a checkpoint written by this project")
    assert not (tmp_path / "empty.pt").exists() and not (tmp_path / "bare.pt").exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_a_failing_write_leaves_the_previous_export_intact(trained_run: TrainedRun, tmp_path: Path, monkeypatch,
                                                           capsys) -> None:
    ckpt = trained_run.last
    target = tmp_path / "mnist.pt"
    export.export(ckpt, "torchscript", target)
    good = target.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    for fmt in ("torchscript", "onnx"):
        output = target if fmt == "torchscript" else tmp_path / "mnist.onnx"
        assert entry_point.main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output)]) == 2
        err = capsys.readouterr().err
        assert f"could not write {fmt} export {output}: No space left on device. Free some space" in err, err
        assert len(err.strip().splitlines()) == 1
    assert target.read_bytes() == good  # the earlier export, whole
    assert not (tmp_path / "mnist.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.pt"]  # no temporary file left behind
    monkeypatch.undo()
    _torchscript(target)  # still a loadable model


def test_export_never_overwrites_a_checkpoint_or_a_record_of_the_run(trained_run_copy: TrainedRun,
                                                                    tmp_path: Path) -> None:
    """--output onto the run's other checkpoint, a checkpoint under another name, or a file the run keeps its
    record in: refused before anything is written, every file as it was. A previous export is replaced."""
    run, last = trained_run_copy.run_dir, trained_run_copy.last
    (run / "metrics.csv").write_text("epoch,step,val/acc\n0,8,0.5\n")  # as a CSV-logger run keeps it
    torch.save(load_checkpoint_file(last)["state_dict"], tmp_path / "weights.pt")
    (tmp_path / "best.onnx").symlink_to(trained_run_copy.best)
    owned = {trained_run_copy.best: "is a checkpoint", tmp_path / "weights.pt": "is a checkpoint",
             tmp_path / "best.onnx": "is a checkpoint", run / "config.yaml": "is a run's config.yaml",
             run / "hparams.yaml": "is a run's hparams.yaml", run / "metrics.csv": "is a run's metrics.csv",
             next(run.glob("events.out.tfevents.*")): "is a run's TensorBoard event file"}
    before = {path: path.read_bytes() for path in owned}
    for path, what in owned.items():
        result = _export(tmp_path, "--ckpt_path", str(last), "--format", "onnx", "--output", str(path))
        _one_line_error(result, f"--output {path} {what}", "nothing was written",
                        "pass another --output, e.g. --output")
    assert {path: path.read_bytes() for path in owned} == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or p.suffix == ".onnx" and not p.is_symlink()]
    # A previous export of the same format, and the default output beside the checkpoint, are replaced.
    for _ in range(2):
        assert _export(tmp_path, "--ckpt_path", str(last), "--format", "torchscript",
                       "--output", "m.pt").returncode == 0
        assert _export(tmp_path, "--ckpt_path", str(last), "--format", "torchscript").returncode == 0
    _torchscript(tmp_path / "m.pt")
    _torchscript(last.with_suffix(".pt"))


# ------------------------------------------------------------------------------- any module class, any net
@pytest.fixture(scope="module")
def fast_checkpoint(tmp_path_factory, shared_tiny_data: Path) -> Path:
    """A real FastMNISTClassifier checkpoint: one epoch with configs/fast.yaml."""
    return _fit(tmp_path_factory.mktemp("fast"), shared_tiny_data, config=PROJECT_ROOT / "configs" / "fast.yaml")


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_a_fast_classifier_checkpoint_exports_like_the_idiomatic_one(fast_checkpoint: Path, shared_tiny_data: Path,
                                                                     tmp_path: Path, fmt: str) -> None:
    """A FastMNISTClassifier checkpoint (its `steps_per_call`, LightningCLI's `_class_path`) exports its logits, as
    the idiomatic class's does; the export loads it as the class that wrote it (export.checkpoint_class), and so
    does `FastMNISTClassifier.load_from_checkpoint`."""
    assert load_checkpoint_file(fast_checkpoint)["hyper_parameters"]["_class_path"] == (
        "mnist_lightning.models.FastMNISTClassifier")
    output = tmp_path / f"fast{export.SUFFIXES[fmt]}"
    result = _export(tmp_path, "--ckpt_path", str(fast_checkpoint), "--format", fmt, "--output", str(output))
    assert result.returncode == 0, result.stderr
    run = _torchscript(output) if fmt == "torchscript" else _onnx_runner(output)
    assert export.checkpoint_class(load_checkpoint_file(fast_checkpoint)["hyper_parameters"]) is FastMNISTClassifier
    model = FastMNISTClassifier.load_from_checkpoint(fast_checkpoint, map_location="cpu").eval()
    images = _test_images(shared_tiny_data)
    with torch.no_grad():
        for batch in (1, 37):
            assert torch.allclose(run(images[:batch]), model(images[:batch]), atol=TOLERANCE, rtol=0), batch
    assert type(model) is FastMNISTClassifier, f"load_from_checkpoint rebuilt {type(model).__name__}"
    assert model.hparams.steps_per_call == 50  # configs/fast.yaml's


@pytest.fixture(scope="module")
def cnn_folder(tmp_path_factory) -> Path:
    """A folder outside the package holding the user's net module."""
    folder = tmp_path_factory.mktemp("user_nets")
    (folder / f"{CNN_MODULE}.py").write_text(CNN_SOURCE)
    return folder


@pytest.fixture(scope="module")
def cnn_checkpoint(tmp_path_factory, shared_tiny_data: Path, cnn_folder: Path) -> Path:
    """One epoch of the user's CNN, trained through the CLI with its module on PYTHONPATH."""
    return _fit(tmp_path_factory.mktemp("cnn"), shared_tiny_data, "--model.net", f"{CNN_MODULE}.SmallCNN",
                "--model.net.init_args.width", "4", env={"PYTHONPATH": str(cnn_folder)})


@pytest.fixture
def cnn_importable(cnn_folder: Path, monkeypatch) -> Iterator[None]:
    """The user's net module on sys.path for an in-process load, and forgotten afterwards."""
    monkeypatch.syspath_prepend(str(cnn_folder))
    yield
    sys.modules.pop(CNN_MODULE, None)


def test_a_net_of_your_own_exports_and_matches_the_checkpoint(cnn_checkpoint: Path, cnn_folder: Path,
                                                              shared_tiny_data: Path, tmp_path: Path,
                                                              cnn_importable) -> None:
    """Not an MLP: the export rebuilds the user's net from the checkpoint and reads its class count from its
    logits. (TorchScript only: the ONNX path is the same `load_net`, covered by the tests above.)"""
    output = tmp_path / "cnn.pt"
    result = _export(tmp_path, "--ckpt_path", str(cnn_checkpoint), "--format", "torchscript", "--output", str(output),
                     env={"PYTHONPATH": str(cnn_folder)})
    assert result.returncode == 0, result.stderr
    assert "output: logits (N, 10)" in result.stdout
    run = _torchscript(output)
    model = MNISTClassifier.load_from_checkpoint(cnn_checkpoint, map_location="cpu").eval()
    assert type(model.net).__name__ == "SmallCNN" and type(model.net).__module__ == CNN_MODULE
    images = _test_images(shared_tiny_data)[:37]
    with torch.no_grad():
        assert torch.allclose(run(images), model(images), atol=TOLERANCE, rtol=0)


def test_a_net_whose_module_is_not_on_the_path_is_one_line(cnn_checkpoint: Path, tmp_path: Path) -> None:
    """The checkpoint names the user's net; without its module on PYTHONPATH the export says which module to put
    there, and writes nothing."""
    result = _export(tmp_path, "--ckpt_path", str(cnn_checkpoint), "--format", "onnx", "--output", "cnn.onnx")
    _one_line_error(result, f"its net {CNN_MODULE}.SmallCNN", f"No module named '{CNN_MODULE}'",
                    f"put the folder holding {CNN_MODULE}.py on PYTHONPATH")
    assert not (tmp_path / "cnn.onnx").exists()


# ------------------------------------------------------------------------------- nets ONNX cannot take
HOSTILE_MODULE = "export_test_hostile_nets"
HOSTILE_SOURCE = '''
"""Nets that train and predict, but that ONNX export cannot take as they are written."""
import torch
from torch import nn


class Linear(nn.Module):
    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.fc = nn.Linear(28 * 28, num_classes)


class Branching(Linear):
    """Data-dependent control flow: which branch runs depends on the input's values."""
    def forward(self, x):
        if x.mean() > 0.5:
            return self.fc(x.flatten(1))
        return -self.fc(x.flatten(1))


class FixedBatch(Linear):
    """The batch size taken as a Python number: the exporter bakes the example's into the model."""
    def forward(self, x):
        return self.fc(x.reshape(int(x.shape[0]), 28 * 28))


class RunningMax(Linear):
    """aten.cummax, which has no ONNX function."""
    def forward(self, x):
        return self.fc(torch.cummax(x.flatten(1), dim=1).values)


class HalfPrecision(Linear):
    """A bfloat16 multiply: it exports, but onnxruntime's CPU provider has no kernel for it."""
    def forward(self, x):
        return self.fc((x.flatten(1).to(torch.bfloat16) * 2).float())


class Variadic(Linear):
    """A forward that takes any number of inputs, which TorchScript cannot compile (ONNX exports it)."""
    def forward(self, x, *unused):
        return self.fc(x.flatten(1))
'''
HOSTILE_NETS = {
    "Branching": ("its forward branches on the values of its input", f"{HOSTILE_MODULE}.py:16 `if x.mean() > 0.5:`",
                  "--format torchscript"),
    "FixedBatch": ("fixed batch size", "x.flatten(1)", "--format torchscript"),
    "RunningMax": ("aten.cummax", "has no ONNX equivalent", "--format torchscript"),
    "HalfPrecision": ("onnxruntime cannot run the exported model", "Mul", "--format torchscript"),
}


@pytest.fixture(scope="module")
def hostile_nets(tmp_path_factory, shared_tiny_data: Path) -> tuple[Path, dict[str, Path]]:
    """(the module's folder, each net's checkpoint): two training batches each, through the CLI."""
    folder = tmp_path_factory.mktemp("hostile_nets")
    (folder / f"{HOSTILE_MODULE}.py").write_text(HOSTILE_SOURCE)
    return folder, {net: _fit(tmp_path_factory.mktemp(net), shared_tiny_data, "--model.net", f"{HOSTILE_MODULE}.{net}",
                              "--trainer.limit_train_batches", "2", env={"PYTHONPATH": str(folder)})
                    for net in [*HOSTILE_NETS, "Variadic"]}


@pytest.mark.parametrize("net", list(HOSTILE_NETS))
def test_a_net_onnx_cannot_take_is_one_line_naming_the_fix(hostile_nets, tmp_path: Path, net: str) -> None:
    """Data-dependent control flow, a batch size baked into a reshape, an op without ONNX function, a model
    onnxruntime cannot run: one line naming the problem and the fix, no file; and the fix it names works."""
    if net == "HalfPrecision":
        pytest.importorskip("onnxruntime", reason="the check that finds it runs the model in onnxruntime")
    folder, checkpoints = hostile_nets
    env = {"PYTHONPATH": str(folder)}
    result = _export(tmp_path, "--ckpt_path", str(checkpoints[net]), "--format", "onnx", "--output", "out/model.onnx",
                     env=env)
    _one_line_error(result, *HOSTILE_NETS[net], "nothing was written")
    assert not list(tmp_path.iterdir())  # no partial file, no temporary one, not even the folder
    fixed = _export(tmp_path, "--ckpt_path", str(checkpoints[net]), "--format", "torchscript", "--output", "model.pt",
                    env=env)
    assert fixed.returncode == 0 and "logits match the checkpoint's" in fixed.stdout, fixed.stderr


def test_a_net_torchscript_cannot_compile_is_one_line_naming_the_fix(hostile_nets, tmp_path: Path) -> None:
    """TorchScript's compile error spans many lines (the reason, the source, a marker): one line naming the
    reason, where, and the fix, no file; and the fix it names works."""
    folder, checkpoints = hostile_nets
    env = {"PYTHONPATH": str(folder)}
    result = _export(tmp_path, "--ckpt_path", str(checkpoints["Variadic"]), "--format", "torchscript", "--output",
                     "model.pt", env=env)
    _one_line_error(result, f"TorchScript cannot compile the net {HOSTILE_MODULE}.Variadic",
                    "variable number of arguments", f"{HOSTILE_MODULE}.py:", "def forward(self, x, *unused):",
                    "--format onnx", "nothing was written")
    assert not list(tmp_path.iterdir())
    pytest.importorskip("onnxscript", reason="the fix it names is the ONNX export")
    fixed = _export(tmp_path, "--ckpt_path", str(checkpoints["Variadic"]), "--format", "onnx", "--output",
                    "model.onnx", env=env)
    assert fixed.returncode == 0, fixed.stderr
