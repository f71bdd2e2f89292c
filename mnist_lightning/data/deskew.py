"""Deskewing: straighten each digit's slant, the classic preprocessing of non-convolutional MNIST classifiers.

    images = deskew(images)            # uint8 (N, 28, 28) in, uint8 (N, 28, 28) out
    python -m mnist_lightning fit --data.deskew true

People slant their handwriting; a fully connected net has to learn every slant of every digit
separately, because nothing in it knows that a sheared 1 is still a 1. Deskewing (LeCun et al.'s
MNIST table lists it for k-NN, SVMs and fully connected nets) takes the shear out of each image
before the net sees it: from the image's ink moments, the slant is the covariance of row and
column over the variance of the rows, and a horizontal shear by minus that slant makes the digit
upright, with its centre of mass on pixel (14, 14), where MNIST centres its digits. It is one
fixed function of each image, applied the same way to training, validation, test and your own
images (and inside an exported model): preprocessing, not augmentation, and it makes no image
more. It uses the images' 2-D layout, so results with it are not "permutation invariant".

Pixels are resampled bilinearly (`grid_sample`); ink pushed past the border is lost, as in the
usual implementation. Plain torch operations only, so the same code runs in TorchScript and ONNX.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# Images deskewed per call of the batched kernel: bounds the float copies (~3 KB per image each).
CHUNK = 4096


def deskew_intensities(x: torch.Tensor) -> torch.Tensor:
    """Deskew float images (N, H, W) of non-negative ink intensities; returns float (N, H, W).

    A blank image (no ink) comes back blank, and one whose ink lies in a single row is only centred.
    """
    n, height, width = x.shape
    rows = torch.arange(height, dtype=x.dtype, device=x.device).view(1, height, 1)
    cols = torch.arange(width, dtype=x.dtype, device=x.device).view(1, 1, width)
    total = x.sum(dim=(1, 2)).clamp_min(1e-12)
    centre_row = ((x * rows).sum(dim=(1, 2)) / total).view(n, 1, 1)
    centre_col = ((x * cols).sum(dim=(1, 2)) / total).view(n, 1, 1)
    var_rows = (x * (rows - centre_row) ** 2).sum(dim=(1, 2)) / total
    cov = (x * (rows - centre_row) * (cols - centre_col)).sum(dim=(1, 2)) / total
    slant = (cov / var_rows.clamp_min(1e-12)).view(n, 1, 1)
    # Output pixel (i, j) reads the input at row i + centre_row - H/2, column j + slant * (i - H/2) + centre_col - W/2.
    source_row = rows + centre_row - height / 2
    source_col = cols + slant * (rows - height / 2) + centre_col - width / 2
    # grid_sample's coordinates: -1 and 1 are the centres of the first and last pixels (align_corners=True).
    grid = torch.stack(
        [source_col * (2 / (width - 1)) - 1, source_row.expand(n, height, width) * (2 / (height - 1)) - 1], dim=-1
    )
    return F.grid_sample(x.unsqueeze(1), grid, mode="bilinear", padding_mode="zeros", align_corners=True).squeeze(1)


def deskew(images: torch.Tensor) -> torch.Tensor:
    """Deskew uint8 images (N, H, W); returns uint8, rounded to the nearest grey level like the originals.

    Kept as uint8 so that a deskewed dataset takes the memory and the batch path of the original one.
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"deskew takes a uint8 tensor (N, H, W); got {images.dtype} {tuple(images.shape)}")
    out = torch.empty_like(images)
    for start in range(0, len(images), CHUNK):
        chunk = images[start : start + CHUNK].to(torch.float32).div_(255)
        out[start : start + CHUNK] = deskew_intensities(chunk).mul_(255).round_().clamp_(0, 255).to(torch.uint8)
    return out


class Deskew(nn.Module):
    """Deskewing as the first layer of an exported model, for input scaled like the training batches.

    The model's input is `pixels / 255`, then `(x - mean) / std` when the run normalised: the ink
    intensities are recovered, deskewed and scaled back, so the exported file takes exactly what the
    checkpoint's net takes and needs no preprocessing code beside it.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.mean = float(mean)
        self.std = float(std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 1, H, W) scaled pixels; returns them deskewed, same shape and scaling."""
        intensities = (x.squeeze(1) * self.std + self.mean).clamp_min(0)
        return ((deskew_intensities(intensities) - self.mean) / self.std).unsqueeze(1)
