"""The MNIST family's IDX files: found in either layout, verified by content (not container), decoded.

Facts come from outside the code: the MNIST constants are checked against the real files and the
values their README publishes; the Fashion-MNIST and KMNIST verification is checked as a mechanism
on tiny files (the real ones are not on these machines), and the values shipped for them against the
published ones, copied here from their publishers.
"""

from __future__ import annotations

import builtins
import csv
import dataclasses
import gzip
import hashlib
from pathlib import Path

import pytest
import torch
from conftest import IDX_NAMES, REAL_DATA_DIR, TINY_ARGS, run_cli, write_idx_dataset

from mnist_lightning.data import idx
from mnist_lightning.data.idx import DATASETS, DatasetSpec, find_file, load_split, missing_files_message, read_idx
from mnist_lightning.errors import DataFileError

RAW_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "kmnist": "KMNIST/raw"}


def _patch_spec(monkeypatch: pytest.MonkeyPatch, dataset: str, folder: Path, **checksums: bool) -> DatasetSpec:
    """Make DATASETS[dataset] describe the tiny files in `folder` as the official ones.

    `checksums`: which of sha256, content_md5 and gz_md5 to set from the files (the others become None).
    """
    spec = DATASETS[dataset]
    files = []
    for file in spec.files:
        gz = find_file(folder, spec, file)
        assert gz is not None and gz.suffix == ".gz"
        content = gzip.decompress(gz.read_bytes())
        count = int.from_bytes(content[4:8], "big")
        files.append(dataclasses.replace(
            file, count=count,
            sha256=hashlib.sha256(content).hexdigest() if checksums.get("sha256") else None,
            content_md5=hashlib.md5(content).hexdigest() if checksums.get("content_md5") else None,
            gz_md5=hashlib.md5(gz.read_bytes()).hexdigest() if checksums.get("gz_md5") else None,
        ))
    patched = dataclasses.replace(spec, files=tuple(files))
    monkeypatch.setitem(DATASETS, dataset, patched)
    return patched


def _regzip(path: Path, level: int = 1) -> bytes:
    """The same content, compressed differently: the .gz bytes (and their MD5) change."""
    again = gzip.compress(gzip.decompress(path.read_bytes()), compresslevel=level, mtime=1)
    assert again != path.read_bytes()
    path.write_bytes(again)
    return again


def _change_one_byte(path: Path, offset: int = -1, gz: bool = True) -> None:
    """One byte of the content changed, to another valid value (a label 0-9 stays a label 0-9)."""
    content = bytearray(gzip.decompress(path.read_bytes()) if gz else path.read_bytes())
    content[offset] = (content[offset] + 1) % 10
    path.write_bytes(gzip.compress(bytes(content)) if gz else bytes(content))


def _gunzip_all(folder: Path) -> None:
    for gz in folder.glob("*.gz"):
        gz.with_suffix("").write_bytes(gzip.decompress(gz.read_bytes()))
        gz.unlink()


# ------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_each_dataset_loads_from_its_folder_in_either_layout(tmp_path, dataset, layout):
    data_dir = write_idx_dataset(tmp_path / dataset, layout=layout, raw_folder=RAW_FOLDERS[dataset])
    images, labels = load_split(data_dir, DATASETS[dataset], train=True, verify_checksum=False)
    assert images.shape == (600, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (600,) and labels.dtype == torch.int64 and int(labels.max()) <= 9


def test_another_datasets_layout_is_not_mistaken_for_this_one(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "d", layout="torchvision", raw_folder="KMNIST/raw")
    with pytest.raises(DataFileError, match="fashion_mnist files are not in"):
        load_split(data_dir, DATASETS["fashion_mnist"], train=True, verify_checksum=False)


def test_a_split_needs_only_its_own_two_files(tmp_path):
    """A folder with only the test files serves `test`; asking it for training names just the training files."""
    data_dir = write_idx_dataset(tmp_path / "d")
    for name in IDX_NAMES[:2]:
        (data_dir / f"{name}.gz").unlink()
    images, _ = load_split(data_dir, DATASETS["mnist"], train=False, verify_checksum=False)
    assert len(images) == 200
    with pytest.raises(DataFileError) as error:
        load_split(data_dir, DATASETS["mnist"], train=True, verify_checksum=False)
    message = str(error.value)
    assert "train-images-idx3-ubyte.gz" in message and "train-labels-idx1-ubyte.gz" in message
    assert "t10k" not in message
    assert idx.missing_files(data_dir, DATASETS["mnist"]) == list(DATASETS["mnist"].files[:2])
    everything = missing_files_message(tmp_path / "empty", DATASETS["mnist"])
    assert all(name in everything for name in IDX_NAMES) and "four" in everything


# ------------------------------------------------------------------- MNIST: facts from the real files
def _readme_sha256() -> dict[str, str]:
    """The SHA-256 values that the data folder's README publishes for the decompressed files."""
    published = {}
    for line in (REAL_DATA_DIR / "README.md").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and len(parts[0]) == 64 and parts[1] in IDX_NAMES:
            published[parts[1]] = parts[0]
    return published


@pytest.mark.real_data
def test_mnist_table_holds_the_published_checksums_of_the_real_files(real_data: Path):
    published = _readme_sha256()
    assert set(published) == set(IDX_NAMES)
    for file in DATASETS["mnist"].files:
        assert file.sha256 == published[file.name]
        content = gzip.decompress((real_data / f"{file.name}.gz").read_bytes())
        assert hashlib.sha256(content).hexdigest() == file.sha256
        assert int.from_bytes(content[4:8], "big") == file.count


@pytest.mark.real_data
def test_mnist_statistics_and_label_counts_are_those_of_the_real_data(real_data: Path):
    spec = DATASETS["mnist"]
    images, labels = load_split(real_data, spec, train=True)
    counts = torch.zeros(256, dtype=torch.float64)
    for chunk in images.view(-1).split(1 << 22):
        counts += torch.bincount(chunk.long(), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    mean = float((counts * values).sum() / counts.sum())
    std = float(((counts * (values - mean) ** 2).sum() / counts.sum()).sqrt())
    assert (round(mean, 4), round(std, 4)) == (spec.mean, spec.std)
    assert torch.bincount(labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    _, test_labels = load_split(real_data, spec, train=False)
    assert torch.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture
def mnist_test_split(real_data: Path, tmp_path: Path) -> Path:
    """A copy of the real MNIST test files (the training files are not needed to check these two)."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in IDX_NAMES[2:]:
        (folder / f"{name}.gz").write_bytes((real_data / f"{name}.gz").read_bytes())
    return folder


@pytest.mark.real_data
def test_mnist_recompressed_or_decompressed_official_content_is_accepted(mnist_test_split: Path):
    _regzip(mnist_test_split / "t10k-images-idx3-ubyte.gz")
    _regzip(mnist_test_split / "t10k-labels-idx1-ubyte.gz", level=9)
    images, labels = load_split(mnist_test_split, DATASETS["mnist"], train=False)
    _gunzip_all(mnist_test_split)
    raw_images, raw_labels = load_split(mnist_test_split, DATASETS["mnist"], train=False)
    assert torch.equal(images, raw_images) and torch.equal(labels, raw_labels) and len(labels) == 10_000


@pytest.mark.real_data
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_with_one_byte_changed_is_refused(mnist_test_split: Path, gz: bool):
    if not gz:
        _gunzip_all(mnist_test_split)
    labels = mnist_test_split / ("t10k-labels-idx1-ubyte" + (".gz" if gz else ""))
    _change_one_byte(labels, gz=gz)
    with pytest.raises(DataFileError, match="not the official t10k-labels-idx1-ubyte: its decompressed content "
                                            "has SHA-256 [0-9a-f]{64} instead of ff7bcfd4"):
        load_split(mnist_test_split, DATASETS["mnist"], train=False)
    load_split(mnist_test_split, DATASETS["mnist"], train=False, verify_checksum=False)  # deliberately custom: fine


# ------------------------------------------------------------- the shipped tables: published values
# Copied from their publishers, not from mnist_lightning.idx, so a typo in a shipped value fails.
# MD5 of the official .gz files: Fashion-MNIST's README (github.com/zalandoresearch/fashion-mnist), the
# values torchvision lists for MNIST and KMNIST (torchvision.datasets.MNIST/KMNIST.resources).
PUBLISHED_GZ_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "kmnist": {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
    },
}
# MD5 of the decompressed official Fashion-MNIST files, as `md5sum` of the gunzipped files is published
# in public projects (and torchvision-style `raw_data` tables) and as the git-annex keys of
# github.com/datasets-mila/datasets--fashionmnist.
PUBLISHED_FASHION_MNIST_CONTENT_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}


def test_the_shipped_checksums_are_the_published_ones():
    """What verification compares against: MNIST's content SHA-256 (checked against the data folder's
    README and the real files by the real_data tests above), Fashion-MNIST's content MD5 and every
    dataset's .gz MD5; KMNIST has no published content checksum, so none is shipped."""
    torchvision_md5 = {name: dict(DATASETS[name].torchvision_class.resources) for name in DATASETS}
    assert set(DATASETS) == set(PUBLISHED_GZ_MD5)
    for name, spec in DATASETS.items():
        assert [(f.name, f.count) for f in spec.files] == [
            ("train-images-idx3-ubyte", 60_000), ("train-labels-idx1-ubyte", 60_000),
            ("t10k-images-idx3-ubyte", 10_000), ("t10k-labels-idx1-ubyte", 10_000)]
        for file in spec.files:
            gz = f"{file.name}.gz"
            assert file.gz_md5 == PUBLISHED_GZ_MD5[name][gz] == torchvision_md5[name][gz], (name, gz)
    for file in DATASETS["fashion_mnist"].files:
        assert file.sha256 is None and file.content_md5 == PUBLISHED_FASHION_MNIST_CONTENT_MD5[file.name], file.name
        assert file.content_checksum == ("md5", PUBLISHED_FASHION_MNIST_CONTENT_MD5[file.name])
    assert all(file.sha256 is None and file.content_md5 is None for file in DATASETS["kmnist"].files)
    assert all(file.content_checksum == ("sha256", file.sha256) and len(file.sha256) == 64
               for file in DATASETS["mnist"].files)


# ---------------------------------------------------- Fashion-MNIST and KMNIST: the mechanism, tiny files
def test_fashion_mnist_has_a_content_checksum_for_every_file():
    for file in DATASETS["fashion_mnist"].files:
        assert file.content_checksum is not None and file.gz_md5 is not None
    assert all(file.content_checksum is None for file in DATASETS["kmnist"].files)


@pytest.mark.parametrize("checksum", ["content_md5", "sha256"])
def test_content_checksum_accepts_any_container_and_refuses_a_changed_byte(tmp_path, monkeypatch, checksum):
    """Fashion-MNIST's files are checked by their content, like MNIST's, whatever holds them."""
    data_dir = write_idx_dataset(tmp_path / "f", layout="torchvision", raw_folder="FashionMNIST/raw")
    spec = _patch_spec(monkeypatch, "fashion_mnist", data_dir, **{checksum: True, "gz_md5": True})
    raw = data_dir / spec.raw_folder
    expected = load_split(data_dir, spec, train=True)
    _regzip(raw / "train-images-idx3-ubyte.gz")  # no longer the "official" .gz bytes: content decides
    assert all(torch.equal(a, b) for a, b in zip(load_split(data_dir, spec, train=True), expected, strict=True))
    _gunzip_all(raw)
    assert all(torch.equal(a, b) for a, b in zip(load_split(data_dir, spec, train=True), expected, strict=True))
    _change_one_byte(raw / "train-labels-idx1-ubyte", gz=False)
    algorithm = "SHA-256" if checksum == "sha256" else "MD5"
    with pytest.raises(DataFileError, match=f"not the official train-labels-idx1-ubyte: its decompressed content has "
                                            f"{algorithm} "):
        load_split(data_dir, spec, train=True)


def test_kmnist_official_gz_is_accepted_and_anything_else_refused_saying_why(tmp_path, monkeypatch):
    data_dir = write_idx_dataset(tmp_path / "k", layout="torchvision", raw_folder="KMNIST/raw")
    spec = _patch_spec(monkeypatch, "kmnist", data_dir, gz_md5=True)  # like the real table: .gz MD5s only
    raw = data_dir / spec.raw_folder
    load_split(data_dir, spec, train=False)  # the official .gz: verified by its MD5
    _regzip(raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataFileError) as error:
        load_split(data_dir, spec, train=False)
    message = str(error.value)
    assert "t10k-images-idx3-ubyte.gz is not byte-identical to the official t10k-images-idx3-ubyte.gz" in message
    assert "no published checksum of KMNIST's decompressed content" in message
    assert "Use the official t10k-images-idx3-ubyte.gz" in message and "--data.verify false" in message
    assert "\n" not in message
    _gunzip_all(raw)
    with pytest.raises(DataFileError, match="t10k-images-idx3-ubyte is a decompressed copy, and there is no "
                                            "published checksum of KMNIST's decompressed content"):
        load_split(data_dir, spec, train=False)
    images, _ = load_split(data_dir, spec, train=False, verify_checksum=False)  # the user's call
    assert len(images) == 200


def test_unofficial_gz_files_fail_the_checks_of_their_dataset(tmp_path):
    """The real tables: tiny fake files are neither Fashion-MNIST's content nor KMNIST's .gz."""
    fashion = write_idx_dataset(tmp_path / "f", layout="torchvision", raw_folder="FashionMNIST/raw")
    with pytest.raises(DataFileError, match="holds 600 items; the official train-labels-idx1-ubyte holds 60000"):
        load_split(fashion, DATASETS["fashion_mnist"], train=True)
    kmnist = write_idx_dataset(tmp_path / "k", layout="torchvision", raw_folder="KMNIST/raw")
    with pytest.raises(DataFileError, match="not byte-identical to the official"):
        load_split(kmnist, DATASETS["kmnist"], train=True)


# --------------------------------------------------------------------------------- unreadable files
def test_unreadable_data_folder_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    data_dir = write_idx_dataset(tmp_path / "d")
    real_access = idx.os.access
    monkeypatch.setattr(idx.os, "access", lambda p, mode: False if Path(p) == data_dir else real_access(p, mode))
    with pytest.raises(DataFileError) as error:
        load_split(data_dir, DATASETS["mnist"], train=True, verify_checksum=False)
    message = str(error.value)
    assert f"cannot read the data folder {data_dir}: permission denied" in message
    assert "Fix its permissions" in message and "\n" not in message


def test_unreadable_data_file_is_a_one_line_error_naming_it(tmp_path, monkeypatch):
    data_dir = write_idx_dataset(tmp_path / "d")
    locked = data_dir / "t10k-images-idx3-ubyte.gz"

    def no_access(file, *args, **kwargs):
        if Path(file) == locked:
            raise PermissionError(13, "Permission denied", str(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(idx, "open", no_access, raising=False)
    with pytest.raises(DataFileError) as error:
        load_split(data_dir, DATASETS["mnist"], train=False, verify_checksum=False)
    message = str(error.value)
    assert f"cannot read the data file {locked}: permission denied" in message
    assert "Fix its permissions" in message and "\n" not in message


def test_decoding_checks_the_count_only_when_verifying(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "d", gz=False)
    file = DATASETS["mnist"].files[3]
    assert len(read_idx(data_dir / file.name, file, verify_checksum=False)) == 200
    with pytest.raises(DataFileError, match="holds 200 items; the official t10k-labels-idx1-ubyte holds 10000"):
        read_idx(data_dir / file.name, file)


# ------------------------------------------------------------------------------------------- CLI
def test_fashion_mnist_end_to_end_with_class_names_in_predictions(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "fashion", layout="torchvision", raw_folder="FashionMNIST/raw")
    fit = run_cli("fit", "--data.dataset", "fashion_mnist", "--data.data_dir", str(data_dir), *TINY_ARGS,
                  "--trainer.max_epochs", "1", "--torch_threads", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    out_csv = tmp_path / "predictions.csv"
    # The dataset comes from the checkpoint: no --data.dataset here.
    predict = run_cli("predict", "--ckpt_path", str(last), "--data.data_dir", str(data_dir), *TINY_ARGS,
                      "--predictions_csv", str(out_csv), cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 200
    assert {row["prediction"] for row in rows} <= set(DATASETS["fashion_mnist"].classes)


def test_a_changed_fashion_mnist_file_is_named_from_the_command_line(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "fashion", layout="torchvision", raw_folder="FashionMNIST/raw")
    result = run_cli("fit", "--data.dataset", "fashion_mnist", "--data.data_dir", str(data_dir),
                     "--trainer.max_epochs", "1", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "holds 600 items; the official" in result.stderr and "Traceback" not in result.stderr
