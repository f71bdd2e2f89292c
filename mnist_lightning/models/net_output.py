"""The check that an injected net maps a batch of images to one logit per class, before any step."""

from __future__ import annotations

import torch
from torch import nn

from mnist_lightning.errors import UserInputError


def check_net_output(net: nn.Module, num_classes: int) -> None:
    """Refuse, in one line, a net whose output is not a tensor of logits (N, num_classes)."""
    was_training = net.training
    try:
        with torch.no_grad():
            net.eval()  # no dropout draws, no batch-norm statistics updated
            probe = torch.zeros(2, 1, 28, 28, device=next(net.parameters(), torch.empty(0)).device)
            output = net(probe)
    finally:
        net.train(was_training)
    if not isinstance(output, torch.Tensor):
        kind = type(output).__name__
        raise UserInputError(f"model.net returns a {kind}, not a tensor: it must return only the logits (N, "
                             f"{num_classes}). Return the other outputs (e.g. features) from another method.")
    if tuple(output.shape) != (2, num_classes):
        raise UserInputError(f"model.net maps a batch (2, 1, 28, 28) to shape {tuple(output.shape)}; it must return "
                             f"logits (2, {num_classes}), one per class of the data. Size its last layer with "
                             "num_classes.")
