"""The MNIST-family datasets and their IDX files: what each dataset is, and how its files are found,
verified and decoded.

`DATASETS` holds what distinguishes MNIST, Fashion-MNIST and KMNIST (files, checksums, statistics,
class names); all three share the IDX format, the 60,000/10,000 split and 28x28 grey images, so one
DataModule serves them. torchvision's own reader checks headers with `assert` (gone under
`python -O`) and cannot say which file is wrong, so headers, sizes, label ranges and checksums are
checked here with real errors that name the file and the fix.

Verification checks the content, not the container: a file is official when its decompressed bytes
have the published checksum, whether it is the original .gz, a re-compressed one or a decompressed
copy. Where no checksum of the content is published (KMNIST), only the original .gz (torchvision's
MD5) can be verified, and anything else is refused with `verify` on, saying so.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch
import torchvision

from mnist_lightning.errors import DataFileError


@dataclass(frozen=True)
class IdxFile:
    """One of the four official files of a dataset."""

    name: str  # decompressed file name, e.g. "train-images-idx3-ubyte"
    count: int  # number of images or labels it must hold
    sha256: str | None = None  # of the decompressed content, where a published value is known
    gz_md5: str | None = None  # of the official .gz (torchvision's value)
    content_md5: str | None = None  # of the decompressed content, where only an MD5 is published

    @property
    def is_images(self) -> bool:
        return "images" in self.name

    @property
    def content_checksum(self) -> tuple[str, str] | None:
        """(hashlib algorithm, hex digest) of the decompressed content, SHA-256 preferred; None if unpublished."""
        if self.sha256 is not None:
            return "sha256", self.sha256
        if self.content_md5 is not None:
            return "md5", self.content_md5
        return None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: type[torchvision.datasets.MNIST]
    mean: float  # of the training pixels after /255, for `normalize=True`
    std: float
    classes: tuple[str, ...]
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]  # train images, train labels, test images, test labels

    @property
    def raw_folder(self) -> str:
        """torchvision's layout: <data_dir>/<ClassName>/raw/."""
        return f"{self.torchvision_class.__name__}/raw"

    def split_files(self, train: bool) -> tuple[IdxFile, IdxFile]:
        """(images, labels) of the training or the test split."""
        return (self.files[0], self.files[1]) if train else (self.files[2], self.files[3])


_NAMES = (
    ("train-images-idx3-ubyte", 60_000),
    ("train-labels-idx1-ubyte", 60_000),
    ("t10k-images-idx3-ubyte", 10_000),
    ("t10k-labels-idx1-ubyte", 10_000),
)


def _files(cls: type, sha256: dict[str, str] | None = None,
           content_md5: dict[str, str] | None = None) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
    gz_md5 = {filename.removesuffix(".gz"): md5 for filename, md5 in cls.resources}
    sha256, content_md5 = sha256 or {}, content_md5 or {}
    return tuple(IdxFile(n, c, sha256.get(n), gz_md5.get(n), content_md5.get(n)) for n, c in _NAMES)  # type: ignore[return-value]


# SHA-256 of the decompressed official MNIST files (../shared/data/mnist/README.md; tests/test_idx.py
# checks them against the real files).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# MD5 of the decompressed official Fashion-MNIST files. No SHA-256 of the decompressed files is
# published that we could find (the SHA-256 values in circulation, e.g. tensorflow-datasets' and
# batchup's, are of the .gz archives). These MD5s are published as git-annex keys, which carry the
# size of the decompressed file, in github.com/datasets-mila/datasets--fashionmnist
# (FashionMNIST/raw/<name> -> MD5E-s<bytes>--<md5>), and as the `md5sum` of the gunzipped files in
# several other public projects.
_FASHION_MNIST_CONTENT_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",  # 47,040,016 bytes
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",  # 60,008 bytes
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",  # 7,840,016 bytes
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",  # 10,008 bytes
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_class=torchvision.datasets.MNIST,
        mean=0.1307,
        std=0.3081,
        classes=tuple(str(d) for d in range(10)),
        files=_files(torchvision.datasets.MNIST, sha256=_MNIST_SHA256),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_class=torchvision.datasets.FashionMNIST,
        mean=0.2860,
        std=0.3530,
        classes=tuple(torchvision.datasets.FashionMNIST.classes),
        files=_files(torchvision.datasets.FashionMNIST, content_md5=_FASHION_MNIST_CONTENT_MD5),
    ),
    "kmnist": DatasetSpec(  # no published checksum of the decompressed content: only the .gz can be verified
        name="kmnist",
        torchvision_class=torchvision.datasets.KMNIST,
        mean=0.1918,
        std=0.3483,
        classes=tuple(torchvision.datasets.KMNIST.classes),
        files=_files(torchvision.datasets.KMNIST),
    ),
}


IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SIDE = 28


def candidate_paths(data_dir: Path, spec: DatasetSpec, file: IdxFile) -> list[Path]:
    """Where a file may live: flat in data_dir or in torchvision's <Class>/raw layout, gzipped or not."""
    folders = [data_dir, data_dir / spec.raw_folder]
    return [folder / f"{file.name}{suffix}" for folder in folders for suffix in ("", ".gz")]


def _unreadable(path: Path, what: str = "file") -> DataFileError:
    return DataFileError(f"cannot read the data {what} {path}: permission denied. Fix its permissions "
                         f"(e.g. chmod u+r{'x' if what == 'folder' else ''} {path}) or use another --data.data_dir.")


def find_file(data_dir: Path, spec: DatasetSpec, file: IdxFile) -> Path | None:
    """The first of `candidate_paths` that is a file; a folder on the way that cannot be searched is an error."""
    for path in candidate_paths(data_dir, spec, file):
        folder = path.parent
        if folder.is_dir() and not os.access(folder, os.R_OK | os.X_OK):
            raise _unreadable(folder, "folder")
        try:
            if path.is_file():
                return path
        except PermissionError:
            raise _unreadable(folder, "folder") from None
    return None


def _open(path: Path) -> BinaryIO:
    if path.suffix != ".gz":
        return open(path, "rb")
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise DataFileError(f"{path} is not a gzip file (wrong header); replace it with the official {path.name}.")
    return gzip.open(path, "rb")


def read_idx(path: Path, file: IdxFile, verify_checksum: bool = True,
             order: torch.Tensor | None = None) -> torch.Tensor:
    """Decode one IDX file (.gz or decompressed) into a uint8 tensor: images (N, 28, 28) or labels (N,).

    Raises DataFileError naming the file for a wrong magic number, a truncated or oversized body,
    wrong dimensions, labels outside 0-9, an unreadable file or (with `verify_checksum`) a count or
    a checksum of the decompressed content other than the official file's.

    `order`: a permutation; item `order[j]` of the file lands in row j of the result. The body is
    streamed in chunks straight into place, so a train/val split drawn this way costs no second
    copy, and peak memory stays ~1x the data (torchvision's reader needs ~2x).
    """
    header_size = 16 if file.is_images else 8
    expected_checksum = file.content_checksum if verify_checksum else None
    digest = hashlib.new(expected_checksum[0], usedforsecurity=False) if expected_checksum else None
    try:
        with _open(path) as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise DataFileError(f"{path} is truncated: {len(header)} bytes, shorter than the IDX header.")
            if digest is not None:
                digest.update(header)
            count, item_size = _parse_header(path, file, header)
            if verify_checksum and count != file.count:
                raise DataFileError(
                    f"{path} holds {count} items; the official {file.name} holds {file.count}. "
                    "For a custom subset, pass --data.verify false."
                )
            expected = header_size + count * item_size
            if path.suffix != ".gz" and path.stat().st_size != expected:
                _raise_wrong_length(path, count, expected, path.stat().st_size)
            if order is not None and len(order) != count:
                raise DataFileError(f"{path} holds {count} items but the split expects {len(order)}.")
            body = _read_body(f, path, count, item_size, header_size, digest, order)
            if f.read(1):
                _raise_wrong_length(path, count, expected, expected + 1)
    except PermissionError:
        raise _unreadable(path) from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file ({err}); "
                            "replace it with the official one.") from None
    if expected_checksum is not None and digest is not None and digest.hexdigest() != expected_checksum[1]:
        algorithm = "SHA-256" if expected_checksum[0] == "sha256" else "MD5"
        raise DataFileError(
            f"{path} is not the official {file.name}: its decompressed content has {algorithm} {digest.hexdigest()} "
            f"instead of {expected_checksum[1]}. Replace it with the official file, or pass --data.verify false "
            "for a deliberately custom one."
        )
    if file.is_images:
        return body.view(count, IMAGE_SIDE, IMAGE_SIDE)
    body = body.view(count)
    if count and int(body.max()) > 9:
        bad = int(torch.nonzero(body > 9)[0, 0])
        bad_file_index = bad if order is None else int(order[bad])
        raise DataFileError(f"{path} has label {int(body[bad])} at index {bad_file_index}; labels must be 0-9.")
    return body


def _read_body(f: BinaryIO, path: Path, count: int, item_size: int, header_size: int, digest: Any,
               order: torch.Tensor | None) -> torch.Tensor:
    """The `count` items after the header, in chunks, each chunk hashed and put in place (see `read_idx`)."""
    expected = header_size + count * item_size
    destination = None if order is None else torch.argsort(order)
    body = torch.empty(count, item_size, dtype=torch.uint8)
    chunk = torch.empty(min(count, max(1, (1 << 20) // item_size)), item_size, dtype=torch.uint8)
    done = 0
    while done < count:
        rows = min(len(chunk), count - done)
        view = memoryview(chunk.numpy()).cast("B")[: rows * item_size]
        got = f.readinto(view)
        while got and got < len(view):  # gzip may return short reads
            more = f.readinto(view[got:])
            if not more:
                break
            got += more
        if got < len(view):
            _raise_wrong_length(path, count, expected, header_size + done * item_size + (got or 0))
        if digest is not None:
            digest.update(view)
        target = slice(done, done + rows) if destination is None else destination[done : done + rows]
        body[target] = chunk[:rows]
        done += rows
    return body


def _parse_header(path: Path, file: IdxFile, header: bytes) -> tuple[int, int]:
    """(item count, bytes per item) from an IDX header, checking the magic number and image size."""
    magic = int.from_bytes(header[0:4], "big")
    expected_magic = IMAGE_MAGIC if file.is_images else LABEL_MAGIC
    if magic != expected_magic:
        raise DataFileError(
            f"{path} has magic number {magic:#010x}, expected {expected_magic:#010x} for an IDX "
            f"{'image' if file.is_images else 'label'} file: is it the right file, decompressed correctly?"
        )
    count = int.from_bytes(header[4:8], "big")
    if not file.is_images:
        return count, 1
    rows, cols = int.from_bytes(header[8:12], "big"), int.from_bytes(header[12:16], "big")
    if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataFileError(f"{path} holds {rows}x{cols} images; MNIST-family images are 28x28.")
    return count, rows * cols


def _raise_wrong_length(path: Path, count: int, expected: int, actual: int) -> None:
    raise DataFileError(
        f"{path} is {'truncated' if actual < expected else 'too long'}: its content is "
        f"{'more than ' if actual > expected else ''}{actual - (actual > expected)} bytes where its header announces "
        f"{count} items ({expected} bytes). "
        "Replace it with the official file."
    )


def verify_container(path: Path, spec: DatasetSpec, file: IdxFile) -> None:
    """For a file whose content checksum is unpublished, the only proof it is official: the original .gz's MD5.

    Files with a published content checksum pass here; `read_idx` checks their content instead.
    """
    if file.content_checksum is not None:
        return
    title = spec.torchvision_class.__name__
    unchecked = (f"there is no published checksum of {title}'s decompressed content to verify it by. "
                 f"Use the official {file.name}.gz (delete this one and run again to download it), or pass "
                 "--data.verify false to use it unchecked.")
    if path.suffix != ".gz" or file.gz_md5 is None:
        raise DataFileError(f"{path} is a decompressed copy, and {unchecked}")
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except PermissionError:
        raise _unreadable(path) from None
    if digest.hexdigest() != file.gz_md5:
        raise DataFileError(f"{path} is not byte-identical to the official {file.name}.gz (MD5 {digest.hexdigest()} "
                            f"instead of {file.gz_md5}), and {unchecked}")


def load_split(data_dir: Path, spec: DatasetSpec, train: bool, verify_checksum: bool = True,
               order_for: Callable[[int], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the training or the test split.

    Needs only that split's two files (a test-only folder serves `test`). `order_for(N)`, if given,
    returns the permutation to store the N items in (see `read_idx`).
    """
    image_file, label_file = spec.split_files(train)
    paths = [find_file(data_dir, spec, file) for file in (image_file, label_file)]
    missing = [file for file, path in zip((image_file, label_file), paths, strict=True) if path is None]
    if missing:
        raise DataFileError(missing_files_message(data_dir, spec, missing))
    image_path, label_path = paths  # type: ignore[misc]
    if verify_checksum:
        verify_container(image_path, spec, image_file)
        verify_container(label_path, spec, label_file)
    labels = read_idx(label_path, label_file, verify_checksum).long()
    order = order_for(len(labels)) if order_for is not None else None
    if order is not None and _header_count(image_path) != len(labels):
        order = None  # counts differ: decode as is, so the error below names both files
    images = read_idx(image_path, image_file, verify_checksum, order)
    if order is not None:
        labels = labels[order]
    if len(images) != len(labels):
        raise DataFileError(f"{image_path} holds {len(images)} images but {label_path} holds {len(labels)} labels.")
    return images, labels


def _header_count(path: Path) -> int:
    try:
        with _open(path) as f:
            return int.from_bytes(f.read(8)[4:8], "big")
    except PermissionError:
        raise _unreadable(path) from None
    except (OSError, EOFError, zlib.error):
        return -1  # read_idx reports the damage


def missing_files(data_dir: Path, spec: DatasetSpec, files: Iterable[IdxFile] | None = None) -> list[IdxFile]:
    """Those of `files` (default: all four) that are in none of their `candidate_paths`."""
    return [f for f in (spec.files if files is None else files) if find_file(data_dir, spec, f) is None]


def missing_files_message(data_dir: Path, spec: DatasetSpec, files: Iterable[IdxFile] | None = None) -> str:
    """What to put where: `files` (default: all four, e.g. only a split's two for `test`)."""
    files = list(spec.files if files is None else files)
    names = "\n".join(f"  {f.name}.gz  (or {f.name})" for f in files)
    every = len(files) == len(spec.files)
    these = "these four official files" if every else "these official files"
    return (
        f"The {spec.name} files are not in {data_dir} and could not be downloaded.\n"
        f"Put {these} in {data_dir} (or in {data_dir / spec.raw_folder}):\n{names}\n"
        f"or point to a folder that has them, e.g. --data.data_dir ../shared/data/mnist"
    )
