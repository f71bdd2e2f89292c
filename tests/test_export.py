"""Export: TorchScript and ONNX files that take a float batch (N, 1, 28, 28) of any N and return the
checkpoint's logits within 1e-5; bad inputs are one clear message and exit code 2."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, run_cli, write_idx_dataset

from mnist_lightning import export
from mnist_lightning.checkpointing import load_checkpoint_file
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MNISTClassifier

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
