"""mnist-lightning: the fully connected MNIST tutorial as a clean, fast, reproducible Lightning project."""

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MLP, MNISTClassifier

__all__ = ["MLP", "MNISTClassifier", "MNISTDataModule"]
