"""Learning-rate schedules that span the whole run, for `--model.lr_scheduler`.

    --model.lr_scheduler mnist_lightning.models.schedules.OneCycle --model.lr_scheduler.init_args.warmup 0.25
    --model.lr_scheduler mnist_lightning.models.schedules.Cosine
    --model.lr_scheduler torch.optim.lr_scheduler.StepLR --model.lr_scheduler.init_args.step_size 2   # any torch one

A torch scheduler given by class path is built with the optimizer alone (LightningCLI's
`LRSchedulerCallable`). One-cycle and cosine annealing also need the run's number of optimizer
steps, which only the Trainer knows once the data is set up; a `RunSchedule` is called with
`(optimizer, total_steps)` instead and stepped after every optimizer step. Write your own by
subclassing `RunSchedule`. A checkpoint records that its schedule spans the run, so a resume
refuses another `max_epochs` (the schedule's length would change under it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from jsonargparse.typing import PositiveFloat
from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, OneCycleLR

from mnist_lightning.errors import UserInputError


class RunSchedule(ABC):
    """A schedule whose length is the run's: built at fit start with the optimizer and the step count."""

    @abstractmethod
    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        """The torch scheduler for this run, stepped once per optimizer step."""


class OneCycle(RunSchedule):
    """Leslie Smith's one-cycle policy (`torch.optim.lr_scheduler.OneCycleLR`), peaking at the optimizer's lr.

    Args:
        warmup: share of the steps spent raising the rate to its peak.
        div_factor: the rate starts at peak / div_factor.
        final_div_factor: and ends at start / final_div_factor.
    """

    def __init__(self, warmup: float = 0.25, div_factor: PositiveFloat = 25.0, final_div_factor: PositiveFloat = 1e4):
        if not 0 < warmup < 1:
            raise UserInputError(f"model.lr_scheduler.init_args.warmup must be in (0, 1); got {warmup!r}.")
        self.warmup, self.div_factor, self.final_div_factor = float(warmup), float(div_factor), float(final_div_factor)

    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        peaks = [group["lr"] for group in optimizer.param_groups]
        try:
            return OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=self.warmup,
                              div_factor=self.div_factor, final_div_factor=self.final_div_factor)
        except ZeroDivisionError as error:  # torch divides by (warmup * total_steps - 1)
            raise UserInputError(
                f"the one-cycle schedule cannot warm up over exactly one step (warmup {self.warmup} of this run's "
                f"{total_steps} optimizer steps): choose another model.lr_scheduler.init_args.warmup, or train "
                "for more steps.") from error


class Cosine(RunSchedule):
    """Cosine annealing from the optimizer's lr to `eta_min` over the whole run."""

    def __init__(self, eta_min: float = 0.0):
        self.eta_min = float(eta_min)

    def __call__(self, optimizer: Optimizer, total_steps: int) -> LRScheduler:
        return CosineAnnealingLR(optimizer, T_max=total_steps, eta_min=self.eta_min)
