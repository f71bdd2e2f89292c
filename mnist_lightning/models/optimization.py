"""What the optimizer is built from: parameter groups with weight decay on weights only, and one-line refusals."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from mnist_lightning.checkpoints.parts import describe
from mnist_lightning.errors import UserInputError, first_line


def parameter_groups(module: nn.Module, make_optimizer: Callable[[Iterable[Any]], torch.optim.Optimizer]
                     ) -> list[dict[str, Any]] | Iterable[nn.Parameter]:
    """The parameters for the optimizer: weight decay on weight matrices and kernels only.

    Decaying biases and batch-norm scales only fights the normalisation (the usual practice, e.g. in
    timm and nanoGPT); the rule reads each parameter's shape, not the net's layout. An optimizer that
    does not decay gets one group, as torch's own default does (and one learning-rate curve).
    """
    probe = make_optimizer([nn.Parameter(torch.zeros(1))])  # asks the optimizer its defaults
    lr = probe.defaults.get("lr")
    if isinstance(lr, int | float) and not lr > 0:  # torch takes 0 and then trains nothing, silently
        raise UserInputError(f"model.optimizer.init_args.lr must be > 0; got {lr!r}.")
    if not probe.defaults.get("weight_decay"):
        return module.parameters()
    decayed = [p for p in module.parameters() if p.ndim >= 2]
    undecayed = [p for p in module.parameters() if p.ndim < 2]
    groups = [{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


@contextmanager
def built_as_setting(key: str, part: Any) -> Iterator[None]:
    """An optimizer or scheduler that refuses its arguments (torch checks them as it is built) is the user's
    setting, not a bug: one line naming the setting."""
    try:
        yield
    except UserInputError:
        raise
    except (ValueError, TypeError) as err:
        raise UserInputError(f"{key} ({describe(part)}) refused its arguments: {first_line(err)}") from err
