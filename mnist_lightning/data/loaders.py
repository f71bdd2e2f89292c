"""Training loaders that a resume can replay: the epoch's order from the seed, and the position in the epoch."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from mnist_lightning.data.augment import TrainingAugmentation


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
    """A DataLoader whose position within the epoch goes into the checkpoint, and which augments its batches.

    Lightning saves `state_dict()` of every training loader that has one and hands it back to
    `load_state_dict()` on resume. The position is the number of batches this epoch has yielded
    (Lightning does not prefetch from sized loaders, so yielded means trained on); on resume the
    same epoch's order is rebuilt and that many batches are skipped, so nothing is repeated or
    missed, whatever the sampler (ours, or Lightning's DistributedSampler).

    `augmentation` transforms each yielded batch, where it lives (main process, the dataset's
    device), with random numbers seeded by (seed, rank, epoch, batch index): the saved position
    is all a resume needs to draw the same ones. It happens inside the loader, so it also reaches
    classes that bypass Lightning's batch hooks (`FastMNISTClassifier`).
    """

    def __init__(self, *args: Any, augmentation: TrainingAugmentation | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.augmentation = augmentation  # an attribute of its own name: Lightning rebuilds the loader from them
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
        epoch, rank = self._sampler_epoch(), int(getattr(self.sampler, "rank", 0))  # DistributedSampler's rank
        for batch in iterator:
            if self.augmentation is not None:
                batch = self.augmentation(batch, rank, epoch, self._epoch_batches)
            self._epoch_batches += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._sampler_epoch(), "batches": self._epoch_batches}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume_from = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def eval_sampler(trainer: pl.Trainer | None, dataset: Dataset) -> Sampler | None:
    """Under DDP, each rank's slice of an evaluation set, with no image repeated; else None (in order).

    Lightning's default DistributedSampler pads the last slice with repeats so that every rank
    gets as many images, and the synced accuracy then differs from one process's (201 test
    images on 2 ranks would count 202). Lightning's UnrepeatedDistributedSampler (its own
    choice for predict) leaves ranks up to one image apart instead. That is safe for DDP
    evaluation: its only collectives are a buffer broadcast in the first batch, which every rank
    has, and the metrics' sync in `compute()`. Being a DistributedSampler, Lightning keeps it.
    FSDP (not a DDPStrategy) syncs in every forward, so it keeps Lightning's default.
    """
    if trainer is None or not isinstance(trainer.strategy, DDPStrategy) or trainer.world_size < 2:
        return None
    return UnrepeatedDistributedSampler(dataset, shuffle=False, **trainer.distributed_sampler_kwargs)
