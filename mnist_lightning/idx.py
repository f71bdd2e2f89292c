"""Find, verify and decode the four IDX files of an MNIST-family dataset.

torchvision's own reader checks headers with `assert` (gone under `python -O`) and cannot say
which file is wrong, so headers, sizes, label ranges and checksums are checked here with real
errors that name the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np
import torch

from mnist_lightning.datasets import DatasetSpec, IdxFile
from mnist_lightning.errors import DataFileError

IMAGE_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned byte, 1 dimension
IMAGE_SIDE = 28


def candidate_paths(data_dir: Path, spec: DatasetSpec, file: IdxFile) -> list[Path]:
    """Where a file may live: flat in data_dir or in torchvision's <Class>/raw layout, gzipped or not."""
    folders = [data_dir, data_dir / spec.raw_folder]
    return [folder / f"{file.name}{suffix}" for folder in folders for suffix in ("", ".gz")]


def find_file(data_dir: Path, spec: DatasetSpec, file: IdxFile) -> Path | None:
    return next((p for p in candidate_paths(data_dir, spec, file) if p.is_file()), None)


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    if raw[:2] != b"\x1f\x8b":
        raise DataFileError(f"{path} is not a gzip file (wrong header); replace it with the official {path.name}.")
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file ({err}); replace it with the official one.")


def read_idx(path: Path, file: IdxFile, verify_checksum: bool = True) -> torch.Tensor:
    """Decode one IDX file into a uint8 tensor: images (N, 28, 28) or labels (N,).

    Raises DataFileError naming the file for a wrong magic number, a truncated or oversized body,
    wrong dimensions, labels outside 0-9 or (for files with a known SHA-256) other content.
    """
    data = _read_bytes(path)
    header_size = 16 if file.is_images else 8
    if len(data) < header_size:
        raise DataFileError(f"{path} is truncated: {len(data)} bytes, shorter than the IDX header.")
    magic = int.from_bytes(data[0:4], "big")
    expected_magic = IMAGE_MAGIC if file.is_images else LABEL_MAGIC
    if magic != expected_magic:
        raise DataFileError(
            f"{path} has magic number {magic:#010x}, expected {expected_magic:#010x} for an IDX "
            f"{'image' if file.is_images else 'label'} file: is it the right file, decompressed correctly?"
        )
    count = int.from_bytes(data[4:8], "big")
    if file.is_images:
        rows, cols = int.from_bytes(data[8:12], "big"), int.from_bytes(data[12:16], "big")
        if (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
            raise DataFileError(f"{path} holds {rows}x{cols} images; MNIST-family images are 28x28.")
        item_size = rows * cols
    else:
        item_size = 1
    expected_len = header_size + count * item_size
    if len(data) != expected_len:
        raise DataFileError(
            f"{path} is {'truncated' if len(data) < expected_len else 'too long'}: {len(data)} bytes where its "
            f"header announces {count} items ({expected_len} bytes). Replace it with the official file."
        )
    if verify_checksum and count != file.count:
        raise DataFileError(
            f"{path} holds {count} items; the official {file.name} holds {file.count}. "
            "For a custom subset, pass --data.verify false."
        )
    if verify_checksum and file.sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != file.sha256:
            raise DataFileError(
                f"{path} is not the official {file.name}: SHA-256 {digest} instead of {file.sha256}. "
                "Replace it with the official file, or pass --data.verify false for a deliberately custom one."
            )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_size)
    tensor = torch.from_numpy(array.copy())
    if file.is_images:
        return tensor.view(count, IMAGE_SIDE, IMAGE_SIDE)
    if count and int(tensor.max()) > 9:
        bad = int(torch.nonzero(tensor > 9)[0, 0])
        raise DataFileError(f"{path} has label {int(tensor[bad])} at index {bad}; labels must be 0-9.")
    return tensor


def verify_gz_md5(path: Path, file: IdxFile) -> None:
    """For datasets without a known SHA-256 of the content, check the .gz against torchvision's MD5."""
    if path.suffix != ".gz" or file.gz_md5 is None or file.sha256 is not None:
        return
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != file.gz_md5:
        raise DataFileError(f"{path} is not the official {file.name}.gz: MD5 {digest} instead of {file.gz_md5}.")


def load_split(data_dir: Path, spec: DatasetSpec, train: bool, verify_checksum: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the training or the test split."""
    image_file, label_file = spec.files[0:2] if train else spec.files[2:4]
    paths = []
    for file in (image_file, label_file):
        path = find_file(data_dir, spec, file)
        if path is None:
            raise DataFileError(missing_files_message(data_dir, spec))
        paths.append(path)
    if verify_checksum:
        for path, file in zip(paths, (image_file, label_file)):
            verify_gz_md5(path, file)
    images = read_idx(paths[0], image_file, verify_checksum)
    labels = read_idx(paths[1], label_file, verify_checksum).long()
    if len(images) != len(labels):
        raise DataFileError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels.")
    return images, labels


def missing_files_message(data_dir: Path, spec: DatasetSpec) -> str:
    names = "\n".join(f"  {f.name}.gz  (or {f.name})" for f in spec.files)
    return (
        f"The {spec.name} files are not in {data_dir} and could not be downloaded.\n"
        f"Put these four official files in {data_dir} (or in {data_dir / spec.raw_folder}):\n{names}\n"
        f"or point to a folder that has them, e.g. --data.data_dir ../shared/data/mnist"
    )
