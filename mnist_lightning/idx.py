"""Find, verify and decode the four IDX files of an MNIST-family dataset.

torchvision's own reader checks headers with `assert` (gone under `python -O`) and cannot say
which file is wrong, so headers, sizes, label ranges and checksums are checked here with real
errors that name the file and the fix.
"""

from __future__ import annotations

import gzip
import hashlib
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

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


def _open(path: Path) -> BinaryIO:
    if path.suffix != ".gz":
        return open(path, "rb")
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise DataFileError(f"{path} is not a gzip file (wrong header); replace it with the official {path.name}.")
    return gzip.open(path, "rb")


def read_idx(path: Path, file: IdxFile, verify_checksum: bool = True, order: torch.Tensor | None = None) -> torch.Tensor:
    """Decode one IDX file into a uint8 tensor: images (N, 28, 28) or labels (N,).

    Raises DataFileError naming the file for a wrong magic number, a truncated or oversized body,
    wrong dimensions, labels outside 0-9 or (with `verify_checksum`) a count or SHA-256 other than
    the official file's.

    `order`: a permutation; item `order[j]` of the file lands in row j of the result. The body is
    streamed in chunks straight into place, so a train/val split drawn this way costs no second
    copy, and peak memory stays ~1x the data (torchvision's reader needs ~2x).
    """
    header_size = 16 if file.is_images else 8
    digest = hashlib.sha256()
    try:
        with _open(path) as f:
            header = f.read(header_size)
            if len(header) < header_size:
                raise DataFileError(f"{path} is truncated: {len(header)} bytes, shorter than the IDX header.")
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
                digest.update(view)
                target = slice(done, done + rows) if destination is None else destination[done : done + rows]
                body[target] = chunk[:rows]
                done += rows
            if f.read(1):
                _raise_wrong_length(path, count, expected, expected + 1)
    except (OSError, EOFError, zlib.error) as err:
        raise DataFileError(f"{path} is a truncated or corrupt gzip file ({err}); replace it with the official one.") from None
    if verify_checksum and file.sha256 is not None and digest.hexdigest() != file.sha256:
        raise DataFileError(
            f"{path} is not the official {file.name}: SHA-256 {digest.hexdigest()} instead of {file.sha256}. "
            "Replace it with the official file, or pass --data.verify false for a deliberately custom one."
        )
    if file.is_images:
        return body.view(count, IMAGE_SIDE, IMAGE_SIDE)
    body = body.view(count)
    if count and int(body.max()) > 9:
        bad = int(torch.nonzero(body > 9)[0, 0])
        bad_file_index = bad if order is None else int(order[bad])
        raise DataFileError(f"{path} has label {int(body[bad])} at index {bad_file_index}; labels must be 0-9.")
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


def verify_gz_md5(path: Path, file: IdxFile) -> None:
    """For datasets without a known SHA-256 of the content, check the .gz against torchvision's MD5."""
    if path.suffix != ".gz" or file.gz_md5 is None or file.sha256 is not None:
        return
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    if digest != file.gz_md5:
        raise DataFileError(f"{path} is not the official {file.name}.gz: MD5 {digest} instead of {file.gz_md5}.")


def load_split(data_dir: Path, spec: DatasetSpec, train: bool, verify_checksum: bool = True,
               order_for: Callable[[int], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 28, 28) uint8 and labels (N,) int64 of the training or the test split.

    `order_for(N)`, if given, returns the permutation to store the N items in (see `read_idx`).
    """
    image_file, label_file = spec.files[0:2] if train else spec.files[2:4]
    paths = []
    for file in (image_file, label_file):
        path = find_file(data_dir, spec, file)
        if path is None:
            raise DataFileError(missing_files_message(data_dir, spec))
        paths.append(path)
    if verify_checksum:
        for path, file in zip(paths, (image_file, label_file), strict=True):
            verify_gz_md5(path, file)
    labels = read_idx(paths[1], label_file, verify_checksum).long()
    order = order_for(len(labels)) if order_for is not None else None
    if order is not None and _header_count(paths[0]) != len(labels):
        order = None  # counts differ: decode as is, so the error below names both files
    images = read_idx(paths[0], image_file, verify_checksum, order)
    if order is not None:
        labels = labels[order]
    if len(images) != len(labels):
        raise DataFileError(f"{paths[0]} holds {len(images)} images but {paths[1]} holds {len(labels)} labels.")
    return images, labels


def _header_count(path: Path) -> int:
    with _open(path) as f:
        return int.from_bytes(f.read(8)[4:8], "big")


def missing_files_message(data_dir: Path, spec: DatasetSpec) -> str:
    names = "\n".join(f"  {f.name}.gz  (or {f.name})" for f in spec.files)
    return (
        f"The {spec.name} files are not in {data_dir} and could not be downloaded.\n"
        f"Put these four official files in {data_dir} (or in {data_dir / spec.raw_folder}):\n{names}\n"
        f"or point to a folder that has them, e.g. --data.data_dir ../shared/data/mnist"
    )
