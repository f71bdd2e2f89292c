"""The digits as tensors, batched for the loaders: the fast in-memory path and the classic per-sample one.

    dataset = InMemoryDigits(images, labels)          # uint8 (N, 28, 28), int64 (N,)
    x, y = dataset.__getitems__([0, 1, 2])            # float (3, 1, 28, 28), as ToTensor() scales them
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset


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
