"""The LightningDataModule: find or download, verify, split and batch an MNIST-family dataset.

    dm = MNISTDataModule(data_dir="../shared/data/mnist")
    dm.prepare_data(); dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))   # (64, 1, 28, 28) float, (64,) int64
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler
from torchvision import transforms

from mnist_lightning.augment import BatchAugment, TrainingAugmentation, augment_config
from mnist_lightning.deskew import deskew
from mnist_lightning.digits import InMemoryDigits, PerSampleDigits, keep_batch
from mnist_lightning.errors import DataFileError, UserInputError
from mnist_lightning.idx import DATASETS, DatasetSpec, load_split, missing_files, missing_files_message
from mnist_lightning.images import ImageFolderDigits
from mnist_lightning.model import part_settings

log = logging.getLogger(__name__)

DatasetName = Literal["mnist", "fashion_mnist", "kmnist"]

# Decoded splits shared by prepare_data and setup in one process: (dir, dataset, train, verify) -> tensors.
_DECODED: dict[tuple[str, str, bool, bool], tuple[torch.Tensor, torch.Tensor]] = {}


def split_order(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the n training images: the last `val_size` go to validation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def split_indices(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """Train and validation indices, exactly as `random_split(range(n), [n - val_size, val_size], seed)`."""
    order = split_order(n, seed).tolist()
    return order[: n - val_size], order[n - val_size :]


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


class MNISTDataModule(pl.LightningDataModule):
    """MNIST (or Fashion-MNIST, KMNIST) for training, validation, test and prediction.

    The validation set is cut from the 60,000 training images with a seeded generator; the official
    10,000 test images serve `test` (and `predict` by default) and nothing else.

    Args:
        data_dir: folder with the four official files, flat or in torchvision's ``MNIST/raw``
            layout, gzipped or not; downloaded there by torchvision when they are missing.
        dataset: ``mnist``, ``fashion_mnist`` or ``kmnist``.
        batch_size: training batch size per device (the global batch under DDP is this times the
            number of processes).
        eval_batch_size: batch size for validation, test and predict; it does not change results.
        num_workers: loader processes. 0 is fastest for the in-memory path.
        val_size: images held out of the 60,000 for validation. 0 trains on all of them and runs no
            validation (the final refit: the model is the run's ``last.ckpt``).
        split_seed: seed of the train/validation split (independent of the training seed).
        normalize: False reproduces the tutorial (``ToTensor()`` only); True also subtracts the
            dataset's mean and divides by its std.
        deskew: straighten each digit's slant before anything else (`mnist_lightning.deskew`),
            the same way for every split and for your own images in ``predict``.
        pipeline: ``memory`` gathers whole batches from one uint8 tensor (fast, the default);
            ``torchvision`` is the classic per-sample PIL + ``ToTensor`` pipeline.
        verify: check the files against the official checksums and sizes. Turn off only for
            deliberately custom files (e.g. a subset).
        predict_path: an image file or folder of images to classify in ``predict`` instead of the
            test set (see ``mnist_lightning.images`` for the preprocessing).
        augment: a random transform of each training batch (`mnist_lightning.augment`), e.g.
            ``mnist_lightning.augment.AffineJitter``; never applied to validation, test or predict
            images. None (the default) trains on the images as they are.
    """

    # What a checkpoint fixes, declared once (mnist_lightning.checkpoint_settings reads these): evaluation
    # takes the input and split settings from the checkpoint, a resume refuses to change any of them,
    # and the HPARAMS row shows them.
    INPUT_SETTINGS = ("dataset", "normalize", "deskew")  # what the net's input means
    SPLIT_SETTINGS = ("split_seed", "val_size")  # which training images are validation images
    RESUME_SETTINGS = ("batch_size", "augment")  # what else a resumed fit replays: the data order, the steps, the draws

    def __init__(
        self,
        data_dir: str = "data/",
        dataset: DatasetName = "mnist",
        batch_size: int = 64,
        eval_batch_size: int = 1000,
        num_workers: int = 0,
        val_size: int = 5000,
        split_seed: int = 42,
        normalize: bool = False,
        deskew: bool = False,
        pipeline: Literal["memory", "torchvision"] = "memory",
        verify: bool = True,
        predict_path: str | None = None,
        augment: BatchAugment | None = None,
    ):
        super().__init__()
        if dataset not in DATASETS:
            raise UserInputError(f"data.dataset must be one of {', '.join(DATASETS)}; got {dataset!r}.")
        for name, value, minimum in (("batch_size", batch_size, 1), ("eval_batch_size", eval_batch_size, 1),
                                     ("num_workers", num_workers, 0), ("val_size", val_size, 0)):
            if not isinstance(value, int) or value < minimum:
                raise UserInputError(f"data.{name} must be an integer >= {minimum}; got {value!r}.")
        if pipeline not in ("memory", "torchvision"):
            raise UserInputError(f"data.pipeline must be 'memory' or 'torchvision'; got {pipeline!r}.")
        if augment is not None and not isinstance(augment, BatchAugment):
            raise UserInputError(f"data.augment must be a mnist_lightning.augment.BatchAugment; got {augment!r}.")
        self.save_hyperparameters(logger=False)  # the model logs the experiment's hyperparameters
        # Under LightningCLI the augmentation's config (class path, init args) is saved; an object passed
        # in Python is recorded the same way, so the checkpoint stays loadable weights-only.
        if isinstance(self.hparams.get("augment"), BatchAugment):
            self.hparams["augment"] = augment_config(augment)
        self.augment = augment
        self.data_dir = Path(data_dir)
        self.spec: DatasetSpec = DATASETS[dataset]
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.predict_set: Dataset | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    @property
    def num_classes(self) -> int:
        """The net's outputs: the CLI links it to `model.num_classes` and the net's `num_classes`."""
        return len(self.spec.classes)

    @property
    def has_validation(self) -> bool:
        """Whether a fit validates: `val_size` 0 is the final refit on every training image."""
        return self.hparams.val_size > 0

    def fixed_settings(self) -> dict[str, Any]:
        """The settings a checkpoint of a run on this data fixes (see the declarations above), flat: a
        class-path setting gives its class path and each init arg (``augment.init_args.rotation``)."""
        keys = (*self.INPUT_SETTINGS, *self.SPLIT_SETTINGS, *self.RESUME_SETTINGS)
        return part_settings({key: self.hparams[key] for key in keys})

    # ----------------------------------------------------------------------------------- files
    def splits_needed(self, stage: str | None) -> tuple[bool, ...]:
        """Which splits a stage reads (True: training, False: test); predicting your own images reads none."""
        if stage in ("fit", "validate"):
            return (True,)
        if stage == "test" or (stage == "predict" and self.hparams.predict_path is None):
            return (False,)
        if stage == "predict":
            return ()
        return (True, False)

    def prepare_data(self) -> None:
        """Verify the files the stage needs, downloading them with torchvision first if any is missing."""
        stage = self.trainer.state.fn if self.trainer is not None else None
        splits = self.splits_needed(str(stage.value) if stage is not None else None)
        missing = [train for train in splits if missing_files(self.data_dir, self.spec, self.spec.split_files(train))]
        if missing:
            self._download(missing)
        for train in splits:
            self._decoded(train)

    def _download(self, splits: list[bool]) -> None:
        log.info("Downloading %s into %s", self.spec.name, self.data_dir)
        existing = _folders(self.data_dir)
        try:
            for train in splits:
                self.spec.torchvision_class(str(self.data_dir), train=train, download=True)
        except Exception as err:  # urllib/HTTP/OS errors: offline clusters are a normal case
            _remove_empty_folders_since(self.data_dir, existing)  # a mistyped data_dir is left as it was
            files = [f for train in splits for f in self.spec.split_files(train)]
            raise DataFileError(f"{missing_files_message(self.data_dir, self.spec, files)}\n(download failed: {err})") from None

    def _decoded(self, train: bool, keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The split's tensors, decoded once per process: prepare_data keeps them for setup, which
        takes them out of the cache (keep=False) so they are not held twice beside the datasets."""
        key = (str(self.data_dir.resolve()), self.spec.name, train, self.hparams.verify)
        decoded = _DECODED.pop(key, None)
        if decoded is None:
            # Training images are stored in split order (train rows, then validation rows), so the
            # split is two views of one tensor instead of two gathered copies.
            order_for = (lambda n: split_order(n, self.hparams.split_seed)) if train else None
            decoded = load_split(self.data_dir, self.spec, train, self.hparams.verify, order_for)
        if keep:
            _DECODED[key] = decoded
        return decoded

    # ----------------------------------------------------------------------------------- datasets
    def setup(self, stage: str | None = None) -> None:
        """Build the datasets for `stage`. Idempotent: a second call changes nothing."""
        needed = self.splits_needed(stage)
        if stage == "validate" and not self.has_validation:
            raise UserInputError("data.val_size is 0: this run holds out no validation images, so there is nothing "
                                 "to validate on. Use `test` on its checkpoint instead.")
        if True in needed and self.train_set is None:
            images, labels = self._decoded(train=True, keep=False)
            if self.hparams.val_size >= len(images):
                raise UserInputError(
                    f"data.val_size must be smaller than the {len(images)} training images; got {self.hparams.val_size}."
                )
            n_train = len(images) - self.hparams.val_size  # rows are in split order: see _decoded
            self.train_set = self._dataset(images[:n_train], labels[:n_train])
            self.val_set = self._dataset(images[n_train:], labels[n_train:])
            world = self.trainer.world_size if self.trainer is not None else 1
            if world > 1:  # batch semantics under DDP, stated once (docs/scaling.md, "Batch size")
                batch = self.hparams.batch_size
                rank_zero_info(f"Training batch: {batch} per process x {world} processes = global batch {batch * world}.")
        if False in needed and self.test_set is None:
            self.test_set = self._dataset(*self._decoded(train=False, keep=False))
        if stage in (None, "predict") and self.predict_set is None:
            self.predict_set = self._predict_dataset()

    def _dataset(self, images: torch.Tensor, labels: torch.Tensor) -> Dataset:
        mean, std = (self.spec.mean, self.spec.std) if self.hparams.normalize else (None, None)
        if self.hparams.deskew:
            images = deskew(images)
        if self.hparams.pipeline == "torchvision":
            steps = [transforms.ToTensor()] + ([transforms.Normalize((mean,), (std,))] if mean is not None else [])
            return PerSampleDigits(images, labels, transforms.Compose(steps))
        dataset = InMemoryDigits(images, labels, mean, std)
        device = self._device()
        # With no worker processes the whole dataset can live on the accelerator: moved once, here.
        if device.type == "cuda" and self.hparams.num_workers == 0:
            dataset.to(device)
        return dataset

    def _predict_dataset(self) -> Dataset:
        if self.hparams.predict_path is None:
            assert self.test_set is not None
            return self.test_set
        mean, std = (self.spec.mean, self.spec.std) if self.hparams.normalize else (None, None)
        return ImageFolderDigits(self.hparams.predict_path, mean, std, deskew=self.hparams.deskew)

    def _device(self) -> torch.device:
        trainer = self.trainer
        return trainer.strategy.root_device if trainer is not None else torch.device("cpu")

    # ----------------------------------------------------------------------------------- loaders
    def _loader_kwargs(self, dataset: Dataset) -> dict:
        in_memory = isinstance(dataset, InMemoryDigits)
        workers = self.hparams.num_workers
        return {
            "collate_fn": keep_batch if in_memory else None,
            "num_workers": workers,
            "persistent_workers": workers > 0,
            # Every iter() of a DataLoader draws a worker base seed from its generator, or from the
            # global RNG when it has none; that would shift dropout's random stream differently in
            # a run resumed mid-epoch than in an uninterrupted one.
            "generator": torch.Generator().manual_seed(self.hparams.split_seed),
        }

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup('fit') first"
        return ResumableDataLoader(
            self.train_set,
            batch_size=self.hparams.batch_size,
            sampler=EpochShuffleSampler(self.train_set),
            augmentation=self._augmentation(),
            **self._loader_kwargs(self.train_set),
        )

    def _augmentation(self) -> TrainingAugmentation | None:
        """The training batches' transform, seeded from the run's seed (as the shuffling is)."""
        if self.augment is None:
            return None
        background = -self.spec.mean / self.spec.std if self.hparams.normalize else 0.0
        return TrainingAugmentation(self.augment, int(os.environ.get("PL_GLOBAL_SEED", 0)), background)

    def _eval_loader(self, dataset: Dataset | None, shard: bool = True) -> DataLoader:
        """In order, `eval_batch_size` at a time; `shard=False` leaves DDP sharding to Lightning."""
        assert dataset is not None, "call setup() for this stage first"
        sampler = self._eval_sampler(dataset) if shard else None
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, sampler=sampler, **self._loader_kwargs(dataset))

    def _eval_sampler(self, dataset: Dataset) -> Sampler | None:
        """Under DDP, each rank's slice of an evaluation set, with no image repeated; else None (in order).

        Lightning's default DistributedSampler pads the last slice with repeats so that every rank
        gets as many images, and the synced accuracy then differs from one process's (201 test
        images on 2 ranks would count 202). Lightning's UnrepeatedDistributedSampler (its own
        choice for predict) leaves ranks up to one image apart instead. That is safe for DDP
        evaluation: its only collectives are a buffer broadcast in the first batch, which every rank
        has, and the metrics' sync in `compute()`. Being a DistributedSampler, Lightning keeps it.
        FSDP (not a DDPStrategy) syncs in every forward, so it keeps Lightning's default.
        """
        trainer = self.trainer
        if trainer is None or not isinstance(trainer.strategy, DDPStrategy) or trainer.world_size < 2:
            return None
        return UnrepeatedDistributedSampler(dataset, shuffle=False, **trainer.distributed_sampler_kwargs)

    def val_dataloader(self) -> DataLoader | list:
        # No loader is Lightning's way of saying "no validation": no sanity check, no validation epochs.
        return self._eval_loader(self.val_set) if self.has_validation else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        # Lightning itself shards predict loaders without repeats (UnrepeatedDistributedSamplerWrapper).
        return self._eval_loader(self.predict_set, shard=False)


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
