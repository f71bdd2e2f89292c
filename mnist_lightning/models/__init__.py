"""The nets and the LightningModules that train them: the recipe.

Public class paths (configs use these): `mnist_lightning.models.MLP`, `.MNISTClassifier`,
`.FastMNISTClassifier`, `.OneCycle`, `.Cosine` (and `.RunSchedule` to write your own).
"""

from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.fast import FastMNISTClassifier
from mnist_lightning.models.mlp import MLP
from mnist_lightning.models.schedules import Cosine, OneCycle, RunSchedule

__all__ = ["MLP", "Cosine", "FastMNISTClassifier", "MNISTClassifier", "OneCycle", "RunSchedule"]
