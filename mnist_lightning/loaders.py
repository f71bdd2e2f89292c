"""Batches straight from memory, in an order that a checkpoint can resume exactly.

torchvision's MNIST builds a PIL image and runs `ToTensor()` for every sample, which costs more
than the 784-50-10 net itself. Here the images stay one uint8 tensor; a whole batch is gathered by
index (`Dataset.__getitems__`) and scaled at once, with the same arithmetic as `ToTensor()` and
`Normalize()`, so the tensors are identical. The loaders stay real `DataLoader`s, so Lightning
still injects a `DistributedSampler` under DDP and applies `limit_*_batches` / `overfit_batches`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, RandomSampler


class InMemoryDigits(Dataset):
    """uint8 images (N, 28, 28) and int64 labels, scaled to float per batch.

    `mean`/`std` given: `(x / 255 - mean) / std`, as `Normalize`; otherwise `x / 255`, as `ToTensor`.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float | None = None, std: float | None = None):
        if images.dtype != torch.uint8 or images.dim() != 3:
            raise ValueError(f"images must be a uint8 tensor (N, H, W), got {images.dtype} {tuple(images.shape)}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = labels
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.images)

    def scale(self, images: torch.Tensor) -> torch.Tensor:
        x = images.unsqueeze(1).to(torch.get_default_dtype()).div(255)
        if self.mean is not None and self.std is not None:
            x = x.sub_(self.mean).div_(self.std)
        return x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale(self.images[index : index + 1])[0], self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The DataLoader calls this with a whole batch of indices: one gather instead of B lookups."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if self.images.device.type != "cpu":
            index = index.to(self.images.device, non_blocking=True)
        return self.scale(self.images[index]), self.labels[index]

    def to(self, device: torch.device | str) -> InMemoryDigits:
        """Move the whole dataset once (e.g. to the GPU), so no batch crosses the bus again."""
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        return self


class PerSampleDigits(Dataset):
    """The classic torchvision pipeline, sample by sample: PIL image, then `transform`.

    Same `__getitem__` as `torchvision.datasets.MNIST`; kept for augmentation and comparison.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Any):
        self.images = images
        self.labels = labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = Image.fromarray(self.images[index].numpy(), mode="L")
        return self.transform(image), int(self.labels[index])


def keep_batch(batch: Any) -> Any:
    """collate_fn for datasets whose `__getitems__` already returns a collated batch."""
    return batch


class EpochShuffleSampler(RandomSampler):
    """A random order that is a pure function of (seed, epoch).

    Lightning calls `set_epoch` before every epoch, so a resumed run replays exactly the order the
    uninterrupted run would have used; the global RNG plays no part. Subclasses `RandomSampler` so
    that Lightning recognises a shuffled loader and, under DDP, swaps in a `DistributedSampler`
    (which is seeded from seed + epoch in the same way).
    """

    def __init__(self, data_source: Sequence[Any], seed: int | None = None):
        super().__init__(data_source)
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) % 2**63)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader whose position within the epoch goes into the checkpoint.

    Lightning saves `state_dict()` of every training loader that has one and hands it back to
    `load_state_dict()` on resume. The position is the number of batches this epoch has yielded
    (Lightning does not prefetch from sized loaders, so yielded means trained on); on resume the
    same epoch's order is rebuilt and that many batches are skipped, so nothing is repeated or
    missed, whatever the sampler (ours, or Lightning's DistributedSampler).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch_batches = 0
        self._resume_from: dict[str, int] | None = None

    def _sampler_epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return self._iterate(super().__iter__())

    def _iterate(self, iterator: Iterator[Any]) -> Iterator[Any]:
        # A generator: runs at the first next(), i.e. after Lightning's set_epoch for this epoch.
        self._epoch_batches = 0
        resume, self._resume_from = self._resume_from, None
        if resume is not None and resume["epoch"] == self._sampler_epoch():
            for _ in range(resume["batches"]):
                next(iterator)
            self._epoch_batches = resume["batches"]
        for batch in iterator:
            self._epoch_batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._sampler_epoch(), "batches": self._epoch_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_from = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}
