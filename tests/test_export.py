"""Export: TorchScript and ONNX files that take a float batch (N, 1, 28, 28) of any N and return the
checkpoint's logits within 1e-5; bad inputs are one clear message and exit code 2."""

from __future__ import annotations

import errno
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, run_cli, write_idx_dataset

from mnist_lightning import export, resume
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.resume import load_checkpoint_file

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, checkpoint) of a net where eval mode matters: batch norm and dropout, two hidden layers."""
    workdir = tmp_path_factory.mktemp("export")
    data = write_idx_dataset(workdir / "data")
    result = run_cli("fit", "--data.data_dir", str(data), *TINY_ARGS, "--trainer.max_epochs", "1",
                     "--model.hidden_sizes", "[32, 16]", "--model.batch_norm", "true", "--model.dropout", "0.3",
                     "--data.normalize", "true", "--torch_threads", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return data, workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def reference(trained) -> tuple[torch.Tensor, torch.Tensor]:
    """The tiny test images, as the run scaled them, and the checkpoint's MNISTClassifier logits for them."""
    data, ckpt = trained
    checkpoint = load_checkpoint_file(ckpt)
    model = MNISTClassifier(**{k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")})
    model.load_state_dict(checkpoint["state_dict"])
    dm = MNISTDataModule(data_dir=str(data), verify=False, normalize=True)
    dm.setup("test")
    images, _ = dm.test_set.__getitems__(list(range(len(dm.test_set))))
    with torch.no_grad():
        return images, model.eval()(images)


def _export(workdir: Path, *args: str):
    return run_cli("export", *args, cwd=workdir)


def test_torchscript_reproduces_the_checkpoint(trained, reference, tmp_path: Path) -> None:
    _, ckpt = trained
    result = _export(tmp_path, "--ckpt_path", str(ckpt), "--format", "torchscript", "--output", "out/mnist.pt")
    assert result.returncode == 0, result.stderr
    assert "Wrote torchscript model out/mnist.pt" in result.stdout
    assert "(pixels / 255 - 0.1307) / 0.3081" in result.stdout  # the run normalised: the export says so
    images, logits = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        model = torch.jit.load(str(tmp_path / "out" / "mnist.pt"))
    with torch.no_grad():
        for batch in (1, 7, len(images)):
            assert torch.allclose(model(images[:batch]), logits[:batch], atol=TOLERANCE, rtol=0), batch


def test_onnx_reproduces_the_checkpoint(trained, reference, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the optional dependency for the ONNX check")
    _, ckpt = trained
    result = _export(tmp_path, "--ckpt_path", str(ckpt), "--format", "onnx", "--output", "mnist.onnx")
    assert result.returncode == 0, result.stderr
    assert "logits match the checkpoint's" in result.stdout
    session = ort.InferenceSession(str(tmp_path / "mnist.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert inp.shape[1:] == [1, 28, 28] and not isinstance(inp.shape[0], int)  # a dynamic batch dimension
    images, logits = reference
    for batch in (1, 7, len(images)):
        got = torch.from_numpy(session.run([out.name], {inp.name: images[:batch].numpy()})[0])
        assert torch.allclose(got, logits[:batch], atol=TOLERANCE, rtol=0), batch


def test_output_defaults_to_beside_the_checkpoint(trained, tmp_path: Path) -> None:
    _, ckpt = trained
    copy = tmp_path / "run.ckpt"
    copy.write_bytes(ckpt.read_bytes())
    written = export.export(copy, "torchscript")
    assert written == tmp_path / "run.pt" and written.stat().st_size > 0


def test_bad_inputs_are_clean_errors(trained, tmp_path: Path, capsys) -> None:
    _, ckpt = trained
    missing = _export(tmp_path, "--ckpt_path", "nowhere.ckpt", "--format", "onnx", "--output", "m.onnx")
    assert missing.returncode == 2 and "error: checkpoint nowhere.ckpt does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr and not (tmp_path / "m.onnx").exists()
    (tmp_path / "half.ckpt").write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    for args, message in (
        (["--ckpt_path", str(tmp_path / "half.ckpt"), "--format", "torchscript"], "half.ckpt is truncated or corrupt"),
        (["--ckpt_path", str(ckpt), "--format", "tflite"], "invalid choice: 'tflite'"),
        (["--format", "onnx"], "the following arguments are required: --ckpt_path"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            export.main(args)
        assert exit_info.value.code == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "half.pt").exists()


def test_missing_onnx_package_is_a_clean_error(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    _, ckpt = trained
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(SystemExit) as exit_info:
        export.main(["--ckpt_path", str(ckpt), "--format", "onnx", "--output", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert 'pip install -e ".[onnx]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------------------- never over the input
def _one_line_error(result, *fragments: str) -> None:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_export_onto_its_own_checkpoint_is_refused_and_it_stays_unchanged(trained, tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    _, ckpt = trained
    model = tmp_path / "model.pt"  # a checkpoint named like a TorchScript file
    model.write_bytes(ckpt.read_bytes())
    (tmp_path / "link.onnx").symlink_to(model)
    (tmp_path / "sub").mkdir()
    before = model.read_bytes()
    # From the command line: the default output name, and a link to the checkpoint.
    _one_line_error(_export(tmp_path, "--ckpt_path", "model.pt", "--format", "torchscript"),
                    "the default output model.pt (the checkpoint's name with .pt) is the checkpoint", "pass another --output")
    _one_line_error(_export(tmp_path, "--ckpt_path", "model.pt", "--format", "onnx", "--output", "link.onnx"),
                    "--output link.onnx is the checkpoint model.pt itself", "pass another --output")
    # The same path spelled differently, in process.
    monkeypatch.chdir(tmp_path)
    for output in (str(model), "./sub/../model.pt"):
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--ckpt_path", "model.pt", "--format", "onnx", "--output", output])
        assert exit_info.value.code == 2 and "is the checkpoint" in capsys.readouterr().err
    assert model.read_bytes() == before and (tmp_path / "link.onnx").resolve() == model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.onnx", "model.pt", "sub"]  # no logs, no temp files


def test_output_folder_and_empty_checkpoints_are_one_line_errors(trained, tmp_path: Path) -> None:
    _, ckpt = trained
    (tmp_path / "exports").mkdir()
    _one_line_error(_export(tmp_path, "--ckpt_path", str(ckpt), "--format", "onnx", "--output", "exports"),
                    "--output exports is a folder", "exports/model.onnx")
    (tmp_path / "empty.ckpt").write_bytes(b"")
    _one_line_error(_export(tmp_path, "--ckpt_path", "empty.ckpt", "--format", "torchscript"), "empty.ckpt is empty")
    torch.save({"state_dict": {}}, tmp_path / "bare.ckpt")
    _one_line_error(_export(tmp_path, "--ckpt_path", "bare.ckpt", "--format", "torchscript"),
                    "bare.ckpt is not a checkpoint written by this project")
    assert not (tmp_path / "empty.pt").exists() and not (tmp_path / "bare.pt").exists()
    assert not (tmp_path / "lightning_logs").exists()


def test_a_failing_write_leaves_the_previous_export_intact(trained, tmp_path: Path, monkeypatch, capsys) -> None:
    _, ckpt = trained
    target = tmp_path / "mnist.pt"
    export.export(ckpt, "torchscript", target)
    good = target.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(resume.os, "fsync", disk_full)
    for fmt in ("torchscript", "onnx"):
        output = target if fmt == "torchscript" else tmp_path / "mnist.onnx"
        with pytest.raises(SystemExit) as exit_info:
            export.main(["--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"could not write {fmt} export {output}: No space left on device. Free some space" in err, err
        assert len(err.strip().splitlines()) == 1
    assert target.read_bytes() == good  # the earlier export, whole
    assert not (tmp_path / "mnist.onnx").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mnist.pt"]  # no temporary file left behind
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(target))  # still a loadable model


def test_a_fast_classifier_checkpoint_exports_like_the_idiomatic_one(trained, reference, tmp_path: Path) -> None:
    """Checkpoints of FastMNISTClassifier carry `steps_per_call` and LightningCLI's `_class_path`."""
    _, ckpt = trained
    checkpoint = load_checkpoint_file(ckpt)
    checkpoint["hyper_parameters"] = {**checkpoint["hyper_parameters"], "steps_per_call": 5,
                                      "_class_path": "mnist_lightning.fast.FastMNISTClassifier",
                                      "_instantiator": "pytorch_lightning.cli.instantiate_module"}
    fast = tmp_path / "fast.ckpt"
    torch.save(checkpoint, fast)
    assert export.model_class(checkpoint["hyper_parameters"]).__name__ == "FastMNISTClassifier"
    written = export.export(fast, "torchscript")
    images, logits = reference
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = torch.jit.load(str(written))
    with torch.no_grad():
        assert torch.allclose(model(images), logits, atol=TOLERANCE, rtol=0)
