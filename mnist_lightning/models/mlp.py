"""The tutorial's fully connected net, a plain `nn.Module`: 784 -> hidden... -> classes."""

from __future__ import annotations

import torch
from jsonargparse.typing import PositiveInt
from torch import nn

from mnist_lightning.errors import UserInputError
from mnist_lightning.types import AtLeastTwo, UnitShare

IMAGE_PIXELS = 28 * 28


class MLP(nn.Module):
    """784 -> hidden... -> classes. ReLU between layers, none on the logits.

    With the defaults it is the tutorial's 784-50-10 net. Options for stronger recipes:
    `batch_norm` (Linear -> BatchNorm -> ReLU), `dropout` after each hidden ReLU, and
    `input_dropout` on the pixels.

    Args:
        hidden_sizes: widths of the hidden layers; ``[50]`` is the tutorial's net.
        num_classes: outputs; the CLI sets it from the data (``data.num_classes``).
        dropout: after each hidden ReLU.
        input_dropout: on the pixels.
        batch_norm: Linear -> BatchNorm -> ReLU in each hidden layer.
    """

    def __init__(
        self,
        hidden_sizes: list[PositiveInt] = [50],  # noqa: B006 - a list is what LightningCLI and YAML speak
        num_classes: AtLeastTwo = 10,
        dropout: UnitShare = 0.0,
        input_dropout: UnitShare = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        if not hidden_sizes or any(isinstance(h, bool) or not isinstance(h, int) or h <= 0 for h in hidden_sizes):
            raise UserInputError(
                f"MLP hidden_sizes must be a non-empty list of positive integers; got {hidden_sizes!r}.")
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(float(input_dropout)))
        width = IMAGE_PIXELS
        for size in hidden_sizes:
            layers.append(nn.Linear(width, int(size), bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm1d(int(size)))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(float(dropout)))
            width = int(size)
        layers.append(nn.Linear(width, int(num_classes)))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: a float batch (N, 1, 28, 28) or (N, 784); returns logits (N, classes)."""
        return self.layers(x)
