"""mnist-lightning: the fully connected MNIST tutorial as a clean, fast, reproducible Lightning project.

    python -m mnist_lightning fit          # see mnist_lightning/__main__.py
"""

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MLP, MNISTClassifier

__all__ = ["MLP", "MNISTClassifier", "MNISTDataModule"]
