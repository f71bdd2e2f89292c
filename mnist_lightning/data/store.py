"""The dataset's files for the data module: downloaded when missing, decoded once per process.

A failed download (offline clusters are a normal case) leaves no folders it created behind, so a
mistyped `data_dir` is left as it was; `prepare_data` decodes and verifies the files, and `setup` takes
the same tensors instead of reading them a second time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch

from mnist_lightning.data.idx import DatasetSpec, load_split, missing_files, missing_files_message
from mnist_lightning.errors import DataFileError

log = logging.getLogger(__name__)

# Decoded splits shared by prepare_data and setup in one process: (dir, dataset, train, verify) -> tensors.
_DECODED: dict[tuple[str, str, bool, bool], tuple[torch.Tensor, torch.Tensor]] = {}


def ensure_files(data_dir: Path, spec: DatasetSpec, splits: list[bool]) -> None:
    """Download with torchvision the splits (True: training, False: test) whose files are missing."""
    missing = [train for train in splits if missing_files(data_dir, spec, spec.split_files(train))]
    if not missing:
        return
    log.info("Downloading %s into %s", spec.name, data_dir)
    existing = _folders(data_dir)
    try:
        for train in missing:
            spec.torchvision_class(str(data_dir), train=train, download=True)
    except Exception as err:  # urllib/HTTP/OS errors
        _remove_empty_folders_since(data_dir, existing)
        files = [f for train in missing for f in spec.split_files(train)]
        raise DataFileError(f"{missing_files_message(data_dir, spec, files)}\n(download failed: {err})") from None


def decoded_split(data_dir: Path, spec: DatasetSpec, train: bool, verify: bool,
                  order_for: Callable[[int], torch.Tensor] | None, keep: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A split's images and labels, decoded once per process: prepare_data keeps them (`keep`) for setup,
    which takes them out of the cache so they are not held twice beside the datasets. `order_for(n)` gives
    the order the rows are stored in (the training images in split order)."""
    key = (str(data_dir.resolve()), spec.name, train, verify)
    decoded = _DECODED.pop(key, None)
    if decoded is None:
        decoded = load_split(data_dir, spec, train, verify, order_for)
    if keep:
        _DECODED[key] = decoded
    return decoded


def _folders(root: Path) -> set[Path]:
    """The folders that exist of `root`, its parents and everything under it."""
    return {p for p in [root, *root.parents] if p.is_dir()} | {Path(d) for d, _, _ in os.walk(root)}


def _remove_empty_folders_since(root: Path, existing: set[Path]) -> None:
    """Remove the empty folders that a failed download created (e.g. `<data_dir>/MNIST/raw`), deepest first."""
    for folder in sorted(_folders(root) - existing, key=lambda p: len(p.parts), reverse=True):
        try:
            folder.rmdir()  # only when empty: never a file that is there
        except OSError:
            pass
