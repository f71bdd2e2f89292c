"""Random transforms of whole training batches (data augmentation), on the device the batch lives on.

    python -m mnist_lightning fit --data.augment mnist_lightning.data.augment.AffineJitter \
        --data.augment.init_args.rotation 8 --data.augment.init_args.scale 0.08 --data.augment.init_args.shift 2
    python -m mnist_lightning fit --config configs/mlp_best.yaml --config configs/augment.yaml
    python -m mnist_lightning fit --data.augment.help mnist_lightning.data.augment.AffineJitter   # the ranges

`MNISTDataModule(augment=...)` hands the transform to the training loader (`ResumableDataLoader`),
which applies it to every training batch it yields; validation, test and predict loaders never see
it. Each batch's random numbers come from a generator seeded from (run seed, process rank, epoch,
batch index): the stream is a pure function of what a checkpoint already fixes (the seed, and the
loader's position), so a run resumed after a SIGKILL draws exactly the numbers the uninterrupted run
drew, and there is no generator state to save.

Your own transform: subclass `BatchAugment` in a module on PYTHONPATH and pass its class path,
`--data.augment my_augment.MyJitter --data.augment.init_args.strength 0.5`.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from jsonargparse.typing import NonNegativeFloat, restricted_number_type
from torch.nn import functional as F

from mnist_lightning.checkpoints.parts import class_path_of
from mnist_lightning.errors import UserInputError
from mnist_lightning.types import UnitShare

# The ranges `--data.augment.help` shows, refused outside them by the CLI.
Degrees = restricted_number_type("Degrees", float, [(">=", 0), ("<=", 180)], join="and")
Pixels = restricted_number_type("Pixels", float, [(">=", 0), ("<=", 14)], join="and")
Sigma = restricted_number_type("Sigma", float, [(">=", 0.5), ("<=", 14)], join="and")


class BatchAugment(ABC):
    """A random transform of a whole float batch (N, C, H, W) of training images.

    The batch arrives with its background (no ink) at 0, whatever the data's normalisation, and on
    the device it lives on. Draw every random number from `generator` (a CPU generator: draw there,
    then move the numbers to the batch's device), so that runs are reproducible and resumable, and
    return a batch of the same shape, dtype and device.
    """

    @abstractmethod
    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The transformed batch."""


class AffineJitter(BatchAugment):
    """Each image turned, scaled and shifted at random: one `affine_grid` + `grid_sample` per batch.

    Per image, uniformly: a rotation in [-rotation, rotation] degrees, a scale in [1 - scale,
    1 + scale], a shift in [-shift, shift] pixels along each axis; bilinear resampling, background
    where the image is moved away from the frame.

    Args:
        rotation: largest rotation, in degrees, in [0, 180].
        scale: largest relative change of size, in [0, 1) (0.08: 92% to 108%).
        shift: largest shift along each axis, in pixels, in [0, 14].
    """

    def __init__(self, rotation: Degrees = 8.0, scale: UnitShare = 0.08, shift: Pixels = 2.0) -> None:
        self.rotation, self.scale, self.shift = float(rotation), float(scale), float(shift)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grid = self.grid(images, generator)
        return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Where each output pixel samples the input: (N, H, W, 2) in `grid_sample`'s [-1, 1] coordinates."""
        n, _, height, width = images.shape
        u = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1  # each in [-1, 1)
        angle = u[:, 0] * math.radians(self.rotation)
        size = 1 + u[:, 1] * self.scale
        shift = torch.stack((u[:, 2] * 2 * self.shift / width, u[:, 3] * 2 * self.shift / height), dim=1)
        cos, sin = torch.cos(angle) / size, torch.sin(angle) / size
        # Output point p samples the input at M (p - t): the digit is turned by `angle`, grown by `size`
        # and moved by t (a pixel is 2 / width of grid_sample's coordinates).
        matrix = torch.stack((torch.stack((cos, sin), 1), torch.stack((-sin, cos), 1)), 1)
        offset = -(matrix @ shift.unsqueeze(2))
        theta = torch.cat((matrix, offset), dim=2).to(images.device, images.dtype)
        return F.affine_grid(theta, [n, images.shape[1], height, width], align_corners=False)


class ElasticJitter(AffineJitter):
    """`AffineJitter` plus Simard et al.'s (2003) elastic distortion, in the same single resampling.

    The elastic part moves every pixel by a random field: uniform in [-1, 1] per pixel and axis,
    smoothed by a Gaussian of `sigma` pixels, times `alpha` pixels. Simard's MNIST values are
    sigma 4 and alpha 34; larger sigma makes smoother, more rigid distortions.

    Args:
        alpha: strength of the elastic field, in pixels, >= 0 (0: affine only).
        sigma: smoothness of the elastic field: the Gaussian's standard deviation, in pixels, in [0.5, 14].
        rotation, scale, shift: as `AffineJitter` (set them to 0 for the elastic part alone).
    """

    def __init__(self, alpha: NonNegativeFloat = 34.0, sigma: Sigma = 4.0, rotation: Degrees = 8.0,
                 scale: UnitShare = 0.08, shift: Pixels = 2.0) -> None:
        super().__init__(rotation, scale, shift)
        self.alpha, self.sigma = float(alpha), float(sigma)

    def grid(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        grid = super().grid(images, generator)
        n, _, height, width = images.shape
        field = torch.rand(n, 2, height, width, generator=generator) * 2 - 1
        field = _gaussian_blur(field.to(images.device, images.dtype), self.sigma)
        # Pixels to grid_sample's coordinates: x (last axis of the grid) spans the width, y the height.
        scale = torch.tensor([2 * self.alpha / width, 2 * self.alpha / height],
                             device=images.device, dtype=images.dtype)
        return grid + field.permute(0, 2, 3, 1) * scale


def _gaussian_blur(field: torch.Tensor, sigma: float) -> torch.Tensor:
    """Each channel of (N, C, H, W) smoothed by a normalised Gaussian (zero beyond the border), separably."""
    radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=field.device, dtype=field.dtype)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = field.shape[1]
    rows = kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)
    field = F.conv2d(field, rows, padding=(0, radius), groups=channels)
    return F.conv2d(field, rows.transpose(2, 3), padding=(radius, 0), groups=channels)


def batch_seed(seed: int, rank: int, epoch: int, batch: int) -> int:
    """The seed of one training batch's augmentation: a hash, so no two (seed, rank, epoch, batch) share a
    stream, and none coincides with the shuffling's (`EpochShuffleSampler`)."""
    key = f"mnist_lightning.augment/{seed}/{rank}/{epoch}/{batch}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") % 2**63


@dataclass(frozen=True)
class TrainingAugmentation:
    """What the training loader applies to each batch it yields: `augment`, seeded per batch.

    Args:
        augment: the transform.
        seed: the run's seed (`seed_everything`).
        background: the value of a blank pixel after the data's normalisation (0 without it); the
            transform works on images shifted so that the background is 0.
    """

    augment: BatchAugment
    seed: int
    background: float = 0.0

    def images(self, images: torch.Tensor, rank: int, epoch: int, batch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(batch_seed(self.seed, rank, epoch, batch))
        if self.background == 0:
            return self.augment(images, generator)
        return self.augment(images - self.background, generator) + self.background

    def __call__(self, batch: Any, rank: int, epoch: int, index: int) -> Any:
        """A batch `(images, labels, ...)` (tuple or list, as the collate function made it) with its images
        augmented."""
        images = self.images(batch[0], rank, epoch, index)
        if images.shape != batch[0].shape or images.dtype != batch[0].dtype:
            name = f"{type(self.augment).__module__}.{type(self.augment).__qualname__}"
            raise UserInputError(f"data.augment {name} turned a batch {tuple(batch[0].shape)} {batch[0].dtype} into "
                                 f"{tuple(images.shape)} {images.dtype}: a BatchAugment must return images of the "
                                 "shape and dtype it was given.")
        return type(batch)((images, *batch[1:]))


def augment_config(augment: BatchAugment | None) -> dict[str, Any] | None:
    """An augmentation passed in Python, as the class path and init args the CLI would have saved: its
    public attributes of plain types (this module's classes keep their arguments under their own names)."""
    if augment is None:
        return None
    cls = type(augment)
    init_args = {k: v for k, v in vars(augment).items()
                 if not k.startswith("_") and (v is None or type(v) in (bool, int, float, str))}
    return {"class_path": class_path_of(cls), "init_args": init_args}
