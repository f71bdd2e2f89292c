"""mnist-lightning: the fully connected MNIST tutorial as a clean, fast, reproducible Lightning project.

    python -m mnist_lightning fit          # see mnist_lightning/cli.py

    from mnist_lightning import MNISTClassifier
    model = MNISTClassifier.load_from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")

Both module classes are imported here: Lightning rebuilds a checkpoint's class only when it is
already imported, so `load_from_checkpoint` works for either.
"""

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.fast import FastMNISTClassifier
from mnist_lightning.model import MLP, MNISTClassifier

__all__ = ["MLP", "FastMNISTClassifier", "MNISTClassifier", "MNISTDataModule"]
