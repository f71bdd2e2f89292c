"""Predicting on your own digits: MNIST-like preprocessing of any image, per-file errors that name the
file while the rest is still predicted, and the `predict` table and CSV from the command line."""

from __future__ import annotations

import csv
import errno
import os
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_ARGS, TrainedRun, TutorialRun, run_cli
from PIL import Image, ImageDraw

from mnist_lightning import atomic
from mnist_lightning.callbacks.predictions import PredictionTable
from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.digits import InMemoryDigits
from mnist_lightning.data.idx import DATASETS, load_split
from mnist_lightning.data.images import ImageFolderDigits, UnusableImage, display_name, read_image, to_mnist
from mnist_lightning.errors import UserInputError
from mnist_lightning.models.classifier import MNISTClassifier

CSV_HEADER = ["file", "prediction", "probability"]


# ------------------------------------------------------------------------------------ test images
def seven(size: int = 112) -> Image.Image:
    """A light-on-dark '7' with a thick pen, drawn at any size."""
    image = Image.new("L", (size, size), 0)
    s = size / 112
    ImageDraw.Draw(image).line([(25 * s, 20 * s), (85 * s, 20 * s), (45 * s, 95 * s)], fill=255,
                               width=round(10 * s), joint="curve")
    return image


def inverted(image: Image.Image) -> Image.Image:
    return Image.eval(image, lambda v: 255 - v)


def coloured(image: Image.Image) -> Image.Image:
    """Blue ink on yellowish paper, RGB."""
    page = Image.new("RGB", image.size, (250, 240, 200))
    page.paste((30, 60, 200), mask=image)
    return page


def on_transparent(image: Image.Image) -> Image.Image:
    """Black ink on a transparent background, as paint programs save it."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.paste((0, 0, 0, 255), mask=image)
    return layer


def write_folder(folder: Path) -> Path:
    """Good images in every style, plus every kind of bad file."""
    folder.mkdir(parents=True)
    seven().save(folder / "a_seven.png")
    inverted(seven()).save(folder / "b_seven_dark_on_light.jpg", quality=95)
    coloured(seven()).save(folder / "c_seven_colour.png")
    seven().resize((300, 300), Image.Resampling.BICUBIC).save(folder / "d_seven_large.bmp")
    (folder / "e_notes.png").write_text("not an image at all\n")
    (folder / "f_truncated.png").write_bytes((folder / "a_seven.png").read_bytes()[:80])
    Image.new("L", (50, 50), 255).save(folder / "g_blank.png")
    os.symlink(folder / "does_not_exist.png", folder / "h_gone.png")
    (folder / ".hidden.png").write_bytes(b"")
    return folder


GOOD = ["a_seven.png", "b_seven_dark_on_light.jpg", "c_seven_colour.png", "d_seven_large.bmp"]
BAD = {"e_notes.png": "not an image", "f_truncated.png": "truncated", "g_blank.png": "blank",
       "h_gone.png": "not found"}


def centre_of_mass(digit: np.ndarray) -> tuple[float, float]:
    w = digit.astype(np.float64)
    return (w.sum(1) * np.arange(28)).sum() / w.sum(), (w.sum(0) * np.arange(28)).sum() / w.sum()


def ink_box(digit: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(digit)
    return rows.max() - rows.min() + 1, cols.max() - cols.min() + 1


# ---------------------------------------------------------------------------- preprocessing, unit
def test_output_is_an_mnist_image() -> None:
    digit = to_mnist(seven())
    assert digit.shape == (28, 28) and digit.dtype == np.uint8
    assert digit.max() == 255 and (digit == 0).mean() > 0.5  # light ink on a black background


def test_light_background_is_inverted_and_colour_or_alpha_do_not_matter() -> None:
    reference = to_mnist(seven())
    np.testing.assert_array_equal(to_mnist(inverted(seven())), reference)
    np.testing.assert_array_equal(to_mnist(coloured(seven())), reference)
    np.testing.assert_array_equal(to_mnist(on_transparent(seven())), reference)


def test_digit_is_scaled_to_20_pixels_and_centred_by_mass() -> None:
    # A small digit off in a corner of a large grey page (dark ink): same MNIST digit as ever.
    page = Image.new("L", (400, 300), 200)
    page.paste(inverted(seven(60)).point(lambda v: 40 + v * 160 // 255), (310, 20))
    for digit in (to_mnist(seven()), to_mnist(page), to_mnist(seven().resize((300, 300)))):
        assert max(ink_box(digit)) == 20
        row, col = centre_of_mass(digit)
        assert abs(row - 14) <= 0.6 and abs(col - 14) <= 0.6, (row, col)
    assert np.abs(to_mnist(page).astype(int) - to_mnist(seven()).astype(int)).mean() < 8


def test_aspect_ratio_is_kept() -> None:
    bar = Image.new("L", (200, 200), 0)
    ImageDraw.Draw(bar).rectangle((95, 40, 104, 159), fill=255)  # 10 x 120 px
    height, width = ink_box(to_mnist(bar))
    assert height == 20 and width <= 3


def test_blank_image_is_refused() -> None:
    with pytest.raises(UnusableImage, match="blank"):
        to_mnist(Image.new("RGB", (64, 64), (128, 128, 128)))


@pytest.mark.real_data
def test_mnist_digits_come_out_as_they_went_in(real_data: Path) -> None:
    """MNIST was prepared this way, so preprocessing a test digit changes it little (mostly not at all)."""
    images, _ = load_split(real_data, DATASETS["mnist"], train=False, verify_checksum=False)
    differences = [np.abs(to_mnist(Image.fromarray(d.numpy())).astype(int) - d.numpy()).mean() for d in images[:300]]
    assert np.median(differences) < 0.5 and np.mean(differences) < 2.0


# ------------------------------------------------------------------------------- dataset and errors
def test_dataset_scales_like_the_training_data_and_indexes_files(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mine")
    plain = ImageFolderDigits(folder)
    assert [f.name for f in plain.files] == GOOD
    x, index = plain[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() == 1
    assert int(index) == 2
    batch, indices = plain.__getitems__([0, 3])
    assert batch.shape == (2, 1, 28, 28) and indices.tolist() == [0, 3]
    mean, std = DATASETS["mnist"].mean, DATASETS["mnist"].std
    normalised = ImageFolderDigits(folder, mean, std)
    expected = InMemoryDigits(plain.images, plain.labels, mean, std)[2][0]
    assert torch.equal(normalised[2][0], expected)
    assert torch.allclose(normalised[2][0], (x - mean) / std)


def test_bad_files_are_reported_by_name_and_the_rest_kept(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mine")
    dataset = ImageFolderDigits(folder)
    assert len(dataset) == len(GOOD)
    reasons = {path.name: reason for path, reason in dataset.errors}
    assert set(reasons) == set(BAD)  # hidden files are not read
    for name, expected in BAD.items():
        assert expected in reasons[name], (name, reasons[name])


def test_single_file_and_missing_or_useless_paths(tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mine")
    single = ImageFolderDigits(folder / "c_seven_colour.png")
    assert len(single) == 1 and single.files == [folder / "c_seven_colour.png"]
    with pytest.raises(UserInputError, match="nowhere.png does not exist"):
        ImageFolderDigits(tmp_path / "nowhere.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserInputError, match="empty folder"):
        ImageFolderDigits(tmp_path / "empty")
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "notes.png").write_text("hello")
    with pytest.raises(UserInputError, match=r"no usable image[\s\S]*notes.png: not an image"):
        ImageFolderDigits(only_bad)


# ------------------------------------------------------------------------ images a person may have
def wide(image: Image.Image, kind: str) -> Image.Image:
    """The same picture as 16-bit (full range or 12-bit data with an offset) or 32-bit float greyscale."""
    a = np.asarray(image, dtype=np.uint16)
    if kind == "16bit":
        return Image.fromarray(a * 257)  # 0..65535, mode I;16
    if kind == "12bit":
        return Image.fromarray(a * 16 + 100)  # 100..4180: a 12-bit sensor in a 16-bit file, never saturated
    return Image.fromarray(a.astype(np.float32) / 255 * 0.37 - 0.1)  # "F": any float range


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that announces width x height (8-bit grey) but holds almost no data: only its header is legit."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize(("kind", "suffix"), [("16bit", ".png"), ("12bit", ".png"), ("float", ".tif")])
def test_wide_greyscale_files_are_scaled_by_their_own_range(tmp_path: Path, kind: str, suffix: str) -> None:
    """16-bit PNGs and float TIFFs come out exactly like the 8-bit picture, not clipped or saturated."""
    path = tmp_path / f"seven{suffix}"
    wide(seven(), kind).save(path)
    with Image.open(path) as stored:
        assert stored.mode in ("I;16", "I", "F"), stored.mode  # the file really is wide
    np.testing.assert_array_equal(to_mnist(read_image(path)), to_mnist(seven()))
    np.testing.assert_array_equal(to_mnist(wide(inverted(seven()), kind)), to_mnist(seven()))
    with pytest.raises(UnusableImage, match="blank"):
        to_mnist(Image.fromarray(np.full((40, 40), 3000, dtype=np.uint16)))


def test_large_images_are_reduced_before_the_preparation(tmp_path: Path) -> None:
    seven(3000).save(tmp_path / "big.png")
    image = read_image(tmp_path / "big.png")
    assert max(image.size) <= 2048
    assert np.abs(to_mnist(image).astype(int) - to_mnist(seven()).astype(int)).mean() < 8


def test_an_oversized_image_is_refused_from_its_header_before_decoding(tmp_path: Path) -> None:
    """A 13000 x 13000 PNG is 0.8 MB on disk and 169 MB or more once decoded: refused, saying why."""
    png_header_only(tmp_path / "huge.png", 13000, 13000)
    with pytest.raises(UnusableImage, match=r"too large: 13000x13000 pixels \(169 megapixels\) is above the "
                                            r"40-megapixel limit; scale it down first"):
        read_image(tmp_path / "huge.png")  # had it been decoded, the missing data would say "truncated"
    png_header_only(tmp_path / "fine.png", 100, 100)
    with pytest.raises(UnusableImage, match="truncated"):
        read_image(tmp_path / "fine.png")


def test_a_named_pipe_is_skipped_not_read(tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    seven().save(folder / "a_seven.png")
    os.mkfifo(folder / "b_pipe.png")
    result: dict[str, ImageFolderDigits] = {}
    reader = threading.Thread(target=lambda: result.setdefault("dataset", ImageFolderDigits(folder)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading the folder blocked on the named pipe"
    dataset = result["dataset"]
    assert [f.name for f in dataset.files] == ["a_seven.png"]
    assert dataset.errors == [(folder / "b_pipe.png", "not a regular file but a named pipe (FIFO): only image "
                                                      "files are read")]


def test_subfolders_are_read_sorted_and_hidden_ones_skipped(tmp_path: Path) -> None:
    """A folder of class subfolders (0/, 7/, ...) is not 'empty': every image under it is read."""
    folder = tmp_path / "by_class"
    for name in ("7/b.png", "7/a.png", "0/deeper/c.png", "top.png", ".cache/d.png", "7/.e.png"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        seven().save(folder / name)
    (folder / "link").symlink_to(folder / "7", target_is_directory=True)  # not followed: no file read twice
    dataset = ImageFolderDigits(folder)
    assert [f.relative_to(folder).as_posix() for f in dataset.files] == ["0/deeper/c.png", "7/a.png", "7/b.png",
                                                                         "top.png"]
    assert dataset.errors == [] and dataset.summary == f"4 of 4 files in {folder} and its 3 subfolders usable"
    (tmp_path / "hollow" / "0").mkdir(parents=True)
    with pytest.raises(UserInputError, match="empty folder \\(subfolders included\\)"):
        ImageFolderDigits(tmp_path / "hollow")


def _table_with(rows: list[tuple[str, str, float]], csv_path: Path) -> PredictionTable:
    table = PredictionTable(csv_path=str(csv_path))
    table.rows = rows
    return table


def test_names_that_are_not_utf8_are_shown_the_same_everywhere(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9_7.png")  # Latin-1 bytes: not UTF-8
    assert display_name(tmp_path / name) == f"{tmp_path}/caf\\xe9_7.png"
    table = _table_with([(display_name(name), "7", 0.9)], tmp_path / "p.csv")
    assert table.csv_bytes().decode("utf-8").splitlines()[1] == "caf\\xe9_7.png,7,0.900000"


def test_the_csv_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "p.csv"
    target.write_text("file,prediction,probability\nold.png,3,0.500000\n")
    table = _table_with([("new.png", "7", 0.75)], target)

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", disk_full)
    with pytest.raises(UserInputError, match="could not write --predictions_csv .*p.csv: No space left on device"):
        table._write_csv(target)
    assert target.read_text() == "file,prediction,probability\nold.png,3,0.500000\n"  # not emptied
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.csv"]  # no temporary file left
    monkeypatch.undo()
    table._write_csv(target)
    assert _csv(target) == [CSV_HEADER, ["new.png", "7", "0.750000"]]


# ------------------------------------------------------------------------------------------- CLI
# The shared trained run (`trained_run`, the default net on the tiny data) serves every test here: predict
# only reads its last checkpoint.
def _predict(workdir: Path, run: TrainedRun, *extra: str):
    return run_cli("predict", "--ckpt_path", str(run.last), "--data.data_dir", str(run.data_dir), *TINY_ARGS,
                   "--torch_threads", "1", *extra, cwd=workdir)


def _net_probabilities(ckpt: Path, files: list[Path]) -> torch.Tensor:
    """What predict must report for `files`: softmax of the checkpoint's logits for each file prepared by
    `to_mnist` and scaled like the run's data (built here, not by predict's own dataset)."""
    data_hparams = load_checkpoint_file(ckpt)["datamodule_hyper_parameters"]
    assert not data_hparams["normalize"] and not data_hparams["deskew"]  # the default run: pixels / 255
    x = torch.stack([torch.from_numpy(to_mnist(read_image(f))) for f in files]).unsqueeze(1).float() / 255
    model = MNISTClassifier.load_from_checkpoint(ckpt, map_location="cpu").eval()
    with torch.no_grad():
        return model(x).softmax(dim=1)


def _assert_reports(table: list[list[str]], rows: list[list[str]], expected: torch.Tensor) -> None:
    """The table and the CSV rows name the net's classes, with its top probability: the table to its 4
    decimals, the CSV to its 6."""
    confidence, classes = expected.max(dim=1)
    assert [int(r[1]) for r in table] == classes.tolist()
    assert [int(r[1]) for r in rows] == classes.tolist()
    assert [float(r[2]) for r in table] == pytest.approx(confidence.tolist(), abs=5e-5 + 1e-7)
    assert [float(r[2]) for r in rows] == pytest.approx(confidence.tolist(), abs=1e-6)


def _table(stdout: str, key: str) -> list[list[str]]:
    """The rows (name, prediction, probability) printed under the table's header line."""
    lines = stdout.splitlines()
    start = lines.index(next(line for line in lines if line.split() == [*key.split(), "prediction", "probability"]))
    rows = []
    for line in lines[start + 1 :]:
        if len(line.split()) != 3:
            break
        rows.append(line.split())
    return rows


def _csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_predict_a_folder_prints_the_table_and_writes_the_csv(trained_run: TrainedRun, tmp_path: Path) -> None:
    folder = write_folder(tmp_path / "mine")
    result = _predict(tmp_path, trained_run, "--data.predict_path", str(folder), "--predictions_csv", "out/p.csv")
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout, "file")
    assert [Path(row[0]).name for row in table] == GOOD
    for name, reason in BAD.items():
        assert f"{name}: " in result.stderr and reason in result.stderr, name
    rows = _csv(tmp_path / "out" / "p.csv")
    assert rows[0] == CSV_HEADER
    assert [(r[0], r[1]) for r in rows[1:]] == [(r[0], r[1]) for r in table]
    # The class and probability of each file are the net's softmax for the file prepared like MNIST.
    _assert_reports(table, rows[1:], _net_probabilities(trained_run.last, [folder / name for name in GOOD]))
    # All four copies of the same seven are one MNIST digit, so one answer.
    assert len({row[1] for row in table}) == 1


def test_predict_on_saved_digits_is_the_net_on_the_prepared_images(trained_run: TrainedRun, tmp_path: Path) -> None:
    """The tiny data's own test digits saved as PNG files: predict reports, file by file, the class and the
    probability the trained net gives the same prepared tensors (no file mixed up, nothing rescaled twice)."""
    images, _ = load_split(trained_run.data_dir, DATASETS["mnist"], train=False, verify_checksum=False)
    folder = tmp_path / "saved"
    folder.mkdir()
    files = [folder / f"{i:02d}.png" for i in range(24)]
    for image, file in zip(images, files, strict=False):
        Image.fromarray(image.numpy()).save(file)
    result = _predict(tmp_path, trained_run, "--data.predict_path", str(folder), "--predictions_csv", "p.csv")
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout, "file")
    rows = _csv(tmp_path / "p.csv")[1:]
    assert [row[0] for row in table] == [r[0] for r in rows] == [str(f) for f in files]
    _assert_reports(table, rows, _net_probabilities(trained_run.last, files))


def test_predict_runs_on_the_test_set_by_default(trained_run: TrainedRun, tmp_path: Path) -> None:
    result = _predict(tmp_path, trained_run, "--predictions_csv", "p.csv")
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout, "test index")
    assert [int(row[0]) for row in table] == list(range(200))  # the tiny test set, in order
    rows = _csv(tmp_path / "p.csv")
    assert rows[0] == CSV_HEADER and len(rows) == 201
    # The same answers as the checkpoint's model on the test images.
    model = MNISTClassifier.load_from_checkpoint(trained_run.last, map_location="cpu")
    dm = MNISTDataModule(data_dir=str(trained_run.data_dir), verify=False)
    dm.setup("test")
    x, _ = dm.test_set.__getitems__(list(range(200)))
    with torch.no_grad():
        probs = model.eval()(x).softmax(dim=1)
    assert [int(r[1]) for r in rows[1:]] == probs.argmax(dim=1).tolist()
    assert [float(r[2]) for r in rows[1:]] == pytest.approx(probs.max(dim=1).values.tolist(), abs=1e-5)


def test_predict_path_missing_or_all_bad_is_a_clean_error(trained_run: TrainedRun, tmp_path: Path) -> None:
    result = _predict(tmp_path, trained_run, "--data.predict_path", "no/such/digits")
    assert result.returncode == 2
    assert "no/such/digits does not exist" in result.stderr and "Traceback" not in result.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "notes.txt").write_text("hello")
    result = _predict(tmp_path, trained_run, "--data.predict_path", str(bad))
    assert result.returncode == 2
    assert "notes.txt: not an image" in result.stderr and "Traceback" not in result.stderr


def test_predict_reads_what_people_have_and_skips_what_it_cannot(trained_run: TrainedRun, tmp_path: Path) -> None:
    """16-bit and float files, subfolders, a named pipe, an oversized PNG and a name that is not UTF-8."""
    folder = tmp_path / "mine"
    (folder / "more").mkdir(parents=True)
    seven().save(folder / "a_seven.png")
    wide(seven(), "12bit").save(folder / "b_seven_16bit.png")
    wide(inverted(seven()), "float").save(folder / "c_seven_float.tif")
    seven().save(folder / "more" / "d_seven.png")
    os.mkfifo(folder / "e_pipe.png")
    png_header_only(folder / "f_huge.png", 13000, 13000)
    seven().save(os.path.join(os.fsencode(folder), b"g_caf\xe9.png"), format="PNG")
    (tmp_path / "p.csv").write_text("stale\n")
    result = _predict(tmp_path, trained_run, "--data.predict_path", str(folder), "--predictions_csv", "p.csv")
    assert result.returncode == 0, result.stderr
    table = _table(result.stdout, "file")
    names = [Path(row[0]).relative_to(folder).as_posix() for row in table]
    assert names == ["a_seven.png", "b_seven_16bit.png", "c_seven_float.tif", "g_caf\\xe9.png", "more/d_seven.png"]
    assert len({row[1] for row in table}) == 1  # one digit, one answer, whatever the file
    assert "e_pipe.png: not a regular file but a named pipe (FIFO)" in result.stderr
    assert "f_huge.png: too large: 13000x13000 pixels" in result.stderr
    assert f"predicted 5 of 7 files in {folder} and its 1 subfolder usable" in result.stderr
    rows = _csv(tmp_path / "p.csv")  # valid UTF-8, the same names as the table
    assert rows[0] == CSV_HEADER and [r[0] for r in rows[1:]] == [row[0] for row in table]


def test_a_name_with_a_newline_or_a_terminal_escape_stays_on_its_row(trained_run: TrainedRun, tmp_path: Path) -> None:
    """The console shows such a name escaped (`\\n`, `\\x1b`), one row per file; the CSV keeps the true name."""
    folder = tmp_path / "mine"
    folder.mkdir()
    names = ["a_seven.png", "b_seven\nc_fake.png", "d\tseven\x1b[31m.png"]
    for name in names:
        seven().save(folder / name, format="PNG")
    (folder / "e_notes\nf_fake.png").write_text("not an image at all\n")
    result = _predict(tmp_path, trained_run, "--data.predict_path", str(folder), "--predictions_csv", "p.csv")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split() == ["file", "prediction", "probability"])
    rows = [line.split() for line in lines[header + 1 : header + 1 + len(names)]]
    assert [row[0] for row in rows] == [f"{folder}/a_seven.png", f"{folder}/b_seven\\nc_fake.png",
                                        f"{folder}/d\\tseven\\x1b[31m.png"]
    assert all(len(row) == 3 for row in rows) and "\x1b" not in result.stdout + result.stderr
    assert f"skipped {folder}/e_notes\\nf_fake.png: not an image" in result.stderr
    assert [r[0] for r in _csv(tmp_path / "p.csv")[1:]] == [str(folder / name) for name in names]


def test_the_csv_never_overwrites_a_checkpoint_or_a_record_of_the_run(trained_run_copy: TrainedRun,
                                                                      tmp_path: Path) -> None:
    """--predictions_csv onto the checkpoint predict reads, the run's other checkpoint or a file the run keeps
    its record in: refused before predicting, every file as it was. A previous predictions CSV is replaced."""
    run, last = trained_run_copy.run_dir, trained_run_copy.last
    owned = {last: "is the checkpoint this command reads", trained_run_copy.best: "is a checkpoint",
             run / "config.yaml": "is a run's config.yaml", run / "hparams.yaml": "is a run's hparams.yaml",
             next(run.glob("events.out.tfevents.*")): "is a run's TensorBoard event file"}
    before = {path: path.read_bytes() for path in owned}
    for path, what in owned.items():
        result = _predict(tmp_path, trained_run_copy, "--predictions_csv", str(path))
        assert result.returncode == 2, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "test index" not in result.stdout  # nothing predicted
        line = result.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: --predictions_csv {path} {what}"), line
        assert "nothing was written; pass another --predictions_csv, e.g. --predictions_csv" in line, line
    assert {path: path.read_bytes() for path in owned} == before
    assert not [p for p in tmp_path.rglob("*.tmp")]
    for _ in range(2):  # a previous predictions CSV is replaced
        assert _predict(tmp_path, trained_run_copy, "--predictions_csv", "p.csv").returncode == 0
    assert len(_csv(tmp_path / "p.csv")) == 201


@pytest.mark.slow
@pytest.mark.real_data
def test_real_mnist_digits_saved_as_images_are_recognised(real_data: Path, tutorial_on_real_mnist: TutorialRun,
                                                          tmp_path: Path) -> None:
    """The tutorial's net trained on MNIST (conftest's shared run), then 20 test digits saved as PNG/JPEG
    files, enlarged, half of them dark on light: the preprocessing must hand the net digits it recognises."""
    ckpt = tutorial_on_real_mnist.last
    images, labels = load_split(real_data, DATASETS["mnist"], train=False, verify_checksum=False)
    folder = tmp_path / "digits"
    folder.mkdir()
    truth = {}
    for i in range(20):
        digit = Image.fromarray(images[i].numpy()).resize((140, 140), Image.Resampling.BICUBIC)
        name = f"{i:02d}.png" if i % 2 else f"{i:02d}.jpg"
        (inverted(digit) if i % 2 else digit).save(folder / name)
        truth[name] = str(int(labels[i]))
    result = run_cli("predict", "--ckpt_path", str(ckpt), "--data.data_dir", str(real_data), "--data.predict_path",
                     str(folder), "--predictions_csv", "p.csv", "--torch_threads", "1",
                     "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _csv(tmp_path / "p.csv")[1:]
    assert len(rows) == 20
    right = sum(truth[Path(file).name] == prediction for file, prediction, _ in rows)
    assert right >= 17, rows
