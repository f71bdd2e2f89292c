"""The data: the LightningDataModule, the dataset files and their checks, loaders, augmentation, deskewing,
and a person's own image files. Nothing here knows the model.

Public class paths: `mnist_lightning.data.MNISTDataModule`, `.AffineJitter`, `.ElasticJitter` (and
`.BatchAugment` to write your own augmentation).
"""

from mnist_lightning.data.augment import AffineJitter, BatchAugment, ElasticJitter
from mnist_lightning.data.datamodule import MNISTDataModule

__all__ = ["AffineJitter", "BatchAugment", "ElasticJitter", "MNISTDataModule"]
