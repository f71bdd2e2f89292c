"""Deskewing (`--data.deskew true`): a slanted digit comes out upright and centred, an upright one is left
as it is, and every path that feeds the net (each split, both pipelines, your own images, an export)
deskews the same way, so a deskewed run is never fed a slanted digit."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, run_cli
from PIL import Image

from mnist_lightning import MNISTDataModule
from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.data.deskew import Deskew, deskew
from mnist_lightning.data.idx import DATASETS, load_split
from mnist_lightning.data.images import ImageFolderDigits, to_mnist
from mnist_lightning.export import load_net


def slant_and_centre(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: the slant (row-column covariance over row variance) and the centre of mass (row, column)."""
    x = images.double()
    rows = torch.arange(28, dtype=torch.float64).view(1, 28, 1)
    cols = torch.arange(28, dtype=torch.float64).view(1, 1, 28)
    total = x.sum(dim=(1, 2))
    r = (x * rows).sum(dim=(1, 2)) / total
    c = (x * cols).sum(dim=(1, 2)) / total
    dr, dc = rows - r.view(-1, 1, 1), cols - c.view(-1, 1, 1)
    slant = (x * dr * dc).sum(dim=(1, 2)) / (x * dr**2).sum(dim=(1, 2))
    return slant, r, c


def stroke(slope: float, shift: float = 0.0) -> torch.Tensor:
    """A one-pixel-wide stroke down rows 4-23 through column 14 + shift, leaning `slope` columns per row."""
    image = torch.zeros(28, 28, dtype=torch.uint8)
    for row in range(4, 24):
        image[row, round(14 + shift + slope * (row - 14))] = 255
    return image


def test_a_slanted_stroke_comes_out_upright_and_centred() -> None:
    slanted = torch.stack([stroke(0.5), stroke(-0.4, shift=3)])
    before, _, _ = slant_and_centre(slanted)
    assert before.abs().min() > 0.35
    out = deskew(slanted)
    slant, row, col = slant_and_centre(out)
    assert slant.abs().max() < 0.03
    torch.testing.assert_close(row, torch.full((2,), 14.0, dtype=torch.float64), atol=0.1, rtol=0)
    torch.testing.assert_close(col, torch.full((2,), 14.0, dtype=torch.float64), atol=0.1, rtol=0)
    inked_columns = (out.int().sum(dim=1) > 0).sum(dim=1)
    assert inked_columns.max() <= 3, inked_columns  # a vertical stroke (bilinear resampling blurs it a pixel)
    assert out.sum() == pytest.approx(slanted.sum().item(), rel=0.02)  # the ink is moved, not lost


def test_an_upright_centred_digit_is_unchanged_and_a_blank_one_stays_blank() -> None:
    upright = torch.zeros(1, 28, 28, dtype=torch.uint8)
    upright[0, 8:21, 11:18] = 200  # symmetric about pixel (14, 14): no slant, centre of mass on the centre
    assert torch.equal(deskew(upright), upright)
    blank = torch.zeros(2, 28, 28, dtype=torch.uint8)
    assert torch.equal(deskew(blank), blank)


def test_deskew_refuses_anything_but_uint8_images() -> None:
    with pytest.raises(ValueError, match="uint8"):
        deskew(torch.zeros(2, 28, 28))


@pytest.mark.real_data
def test_the_official_test_digits_lose_their_slant_and_keep_their_ink(real_data: Path) -> None:
    images, _ = load_split(real_data, DATASETS["mnist"], train=False)
    out = deskew(images)
    before, _, _ = slant_and_centre(images)
    after, row, col = slant_and_centre(out)
    assert before.abs().mean() > 0.15 and after.abs().mean() < 0.01 and after.abs().max() < 0.05
    off_centre = torch.maximum((row - 14).abs(), (col - 14).abs())
    assert off_centre.mean() < 0.01 and off_centre.max() < 0.2  # the worst: a digit whose ink the shear pushed out
    assert out.double().sum() / images.double().sum() > 0.999


@pytest.mark.parametrize("pipeline", ["memory", "torchvision"])
def test_every_split_of_a_deskewed_datamodule_is_the_deskewed_original(shared_tiny_data: Path, pipeline: str) -> None:
    def datamodule(**kwargs) -> MNISTDataModule:
        dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=100, pipeline=pipeline, **kwargs)
        dm.setup("fit")
        dm.setup("test")
        return dm

    plain, straightened = datamodule(), datamodule(deskew=True)
    for name in ("train_set", "val_set", "test_set"):
        raw, done = getattr(plain, name), getattr(straightened, name)
        assert torch.equal(done.images, deskew(raw.images)), name
        assert not torch.equal(done.images, raw.images), name
        assert torch.equal(done.labels, raw.labels), name


def test_your_own_images_are_deskewed_like_the_training_digits(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    canvas = np.zeros((56, 56), dtype=np.uint8)
    for row in range(8, 48):  # a slanted 1, drawn large
        canvas[row, 20 + row // 2 : 24 + row // 2] = 255
    Image.fromarray(canvas).save(folder / "one.png")
    prepared = torch.from_numpy(to_mnist(Image.open(folder / "one.png"))).unsqueeze(0)
    plain = ImageFolderDigits(folder)
    straightened = ImageFolderDigits(folder, deskew=True)
    assert torch.equal(plain.images, prepared)
    assert torch.equal(straightened.images, deskew(prepared))
    assert slant_and_centre(straightened.images)[0].abs().max() < 0.03 < slant_and_centre(plain.images)[0].abs().min()


def test_the_export_layer_deskews_scaled_input_as_the_data_does(shared_tiny_data: Path) -> None:
    images, _ = load_split(shared_tiny_data, DATASETS["mnist"], train=False, verify_checksum=False)
    mean, std = DATASETS["mnist"].mean, DATASETS["mnist"].std
    scaled = ((images.float() / 255 - mean) / std).unsqueeze(1)
    expected = ((deskew(images).float() / 255 - mean) / std).unsqueeze(1)
    layer = Deskew(mean, std)
    # The data path rounds to grey levels (uint8); the layer does not: at most half a level apart.
    assert (layer(scaled) - expected).abs().max() <= 0.5 / 255 / std + 1e-5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream
        scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(scaled), layer(scaled))


# ------------------------------------------------------------------------------ through the real entry point
@pytest.fixture(scope="module")
def deskewed_run(tmp_path_factory, shared_tiny_data: Path) -> tuple[Path, Path, Path]:
    """(working folder, data folder, last checkpoint) of a short run trained on deskewed, normalised digits.
    (The shared default run serves none of these tests: it neither deskews nor normalises.)"""
    workdir = tmp_path_factory.mktemp("deskew")
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "1",
                     "--data.deskew", "true", "--data.normalize", "true", "--model.net.init_args.batch_norm", "true",
                     "--torch_threads", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir, shared_tiny_data, workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


def test_test_inherits_deskewing_from_the_checkpoint_and_refuses_to_drop_it(deskewed_run) -> None:
    workdir, data, ckpt = deskewed_run
    assert load_checkpoint_file(ckpt)["datamodule_hyper_parameters"]["deskew"] is True
    test = run_cli("test", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *TINY_ARGS, cwd=workdir)
    assert test.returncode == 0, test.stderr
    saved = (workdir / "lightning_logs" / "version_0" / "config.test-1.yaml").read_text()
    assert "deskew: true" in saved
    refused = run_cli("test", "--ckpt_path", str(ckpt), "--data.data_dir", str(data), *TINY_ARGS,
                      "--data.deskew", "false", cwd=workdir)
    assert refused.returncode == 2 and "data.deskew=False" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_an_export_of_a_deskewed_run_takes_the_plain_scaled_pixels(deskewed_run, fmt: str, tmp_path: Path) -> None:
    workdir, data, ckpt = deskewed_run
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime", reason="onnxruntime is the optional dependency for the ONNX check")
    output = tmp_path / f"model.{'pt' if fmt == 'torchscript' else 'onnx'}"
    result = run_cli("export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output), cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "deskewed inside the model" in result.stdout
    images, _ = load_split(data, DATASETS["mnist"], train=False, verify_checksum=False)
    mean, std = DATASETS["mnist"].mean, DATASETS["mnist"].std
    net, _ = load_net(ckpt)
    with torch.no_grad():
        on_deskewed = net[1](((deskew(images).float() / 255 - mean) / std).unsqueeze(1))  # the MLP alone, as in test
    scaled = ((images.float() / 255 - mean) / std).unsqueeze(1)
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = torch.jit.load(str(output))
        with torch.no_grad():
            logits = model(scaled)
    else:
        session = ort.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        logits = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: scaled.numpy()})[0])
    assert torch.equal(logits.argmax(dim=1), on_deskewed.argmax(dim=1))
    assert (logits - on_deskewed).abs().max() < 0.05  # half a grey level of rounding apart, see the layer test
