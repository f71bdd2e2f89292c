"""The LightningDataModule: find or download, verify, split and batch an MNIST-family dataset."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from pytorch_lightning.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from mnist_lightning.checkpoints.parts import keep_saveable_hparams, part_settings
from mnist_lightning.data.augment import BatchAugment, TrainingAugmentation, augment_config
from mnist_lightning.data.deskew import deskew
from mnist_lightning.data.digits import InMemoryDigits, PerSampleDigits, keep_batch
from mnist_lightning.data.idx import DATASETS, DatasetSpec
from mnist_lightning.data.images import ImageFolderDigits
from mnist_lightning.data.loaders import EpochShuffleSampler, ResumableDataLoader, eval_sampler
from mnist_lightning.data.store import decoded_split, ensure_files
from mnist_lightning.errors import UserInputError

DatasetName = Literal["mnist", "fashion_mnist", "kmnist"]


def split_order(n: int, seed: int) -> torch.Tensor:
    """A seeded permutation of the n training images: the last `val_size` go to validation."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


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
        deskew: straighten each digit's slant before anything else (`mnist_lightning.data.deskew`),
            the same way for every split and for your own images in ``predict``.
        pipeline: ``memory`` gathers whole batches from one uint8 tensor (fast, the default);
            ``torchvision`` is the classic per-sample PIL + ``ToTensor`` pipeline.
        verify: check the files against the official checksums and sizes. Turn off only for
            deliberately custom files (e.g. a subset).
        predict_path: an image file or folder of images to classify in ``predict`` instead of the
            test set (see ``mnist_lightning.data.images`` for the preprocessing).
        augment: a random transform of each training batch (`mnist_lightning.data.augment`), e.g.
            ``mnist_lightning.data.AffineJitter``; never applied to validation, test or predict
            images. None (the default) trains on the images as they are.
    """

    # What a checkpoint fixes, declared once (cli/checkpoint_settings.py reads these): evaluation
    # takes the input and split settings from the checkpoint, a resume refuses to change any of them,
    # and the HPARAMS row shows them.
    INPUT_SETTINGS = ("dataset", "normalize", "deskew")  # what the net's input means
    SPLIT_SETTINGS = ("split_seed", "val_size")  # which training images are validation images
    RESUME_SETTINGS = ("batch_size", "augment")  # what else a resumed fit replays: the data order, the steps, the draws

    def __init__(
        self,
        data_dir: str = "data/",
        dataset: DatasetName = "mnist",
        batch_size: PositiveInt = 64,
        eval_batch_size: PositiveInt = 1000,
        num_workers: NonNegativeInt = 0,
        val_size: NonNegativeInt = 5000,
        split_seed: int = 42,
        normalize: bool = False,
        deskew: bool = False,
        pipeline: Literal["memory", "torchvision"] = "memory",
        verify: bool = True,
        predict_path: str | None = None,
        augment: BatchAugment | None = None,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)  # the model logs the experiment's hyperparameters
        # Under LightningCLI the augmentation's config (class path, init args) is saved; an object passed
        # in Python is recorded the same way, so the checkpoint stays loadable weights-only.
        if isinstance(self.hparams.get("augment"), BatchAugment):
            self.hparams["augment"] = augment_config(augment)
        keep_saveable_hparams(self)  # jsonargparse's PositiveInt and the like saved as built-in ints
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
        ensure_files(self.data_dir, self.spec, list(splits))
        for train in splits:
            self._decoded(train)

    def _decoded(self, train: bool, keep: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        # Training images are stored in split order (train rows, then validation rows), so the split is
        # two views of one tensor instead of two gathered copies.
        order_for = (lambda n: split_order(n, self.hparams.split_seed)) if train else None
        return decoded_split(self.data_dir, self.spec, train, self.hparams.verify, order_for, keep)

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
                    f"data.val_size must be smaller than the {len(images)} training images; "
                    f"got {self.hparams.val_size}."
                )
            n_train = len(images) - self.hparams.val_size  # rows are in split order: see _decoded
            self.train_set = self._dataset(images[:n_train], labels[:n_train])
            self.val_set = self._dataset(images[n_train:], labels[n_train:])
            world = self.trainer.world_size if self.trainer is not None else 1
            if world > 1:  # batch semantics under DDP, stated once (docs/scaling.md, "Batch size")
                batch = self.hparams.batch_size
                rank_zero_info(f"Training batch: {batch} per process x {world} processes = "
                               f"global batch {batch * world}.")
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
        sampler = eval_sampler(self.trainer, dataset) if shard else None
        return DataLoader(dataset, batch_size=self.hparams.eval_batch_size, sampler=sampler,
                          **self._loader_kwargs(dataset))

    def val_dataloader(self) -> DataLoader | list:
        # No loader is Lightning's way of saying "no validation": no sanity check, no validation epochs.
        return self._eval_loader(self.val_set) if self.has_validation else []

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        # Lightning itself shards predict loaders without repeats (UnrepeatedDistributedSamplerWrapper).
        return self._eval_loader(self.predict_set, shard=False)
