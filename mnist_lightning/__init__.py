"""mnist-lightning: the fully connected MNIST tutorial as a clean, fast, reproducible Lightning project.

    python -m mnist_lightning fit          # see mnist_lightning/cli/cli.py

    from mnist_lightning import MNISTClassifier
    model = MNISTClassifier.load_from_checkpoint("lightning_logs/version_0/checkpoints/last.ckpt")

`load_from_checkpoint` rebuilds the injected net from the checkpoint (its module must be importable).
A `FastMNISTClassifier` checkpoint loads as that class through `FastMNISTClassifier.load_from_checkpoint`;
`MNISTClassifier.load_from_checkpoint` gives the idiomatic class with the same net and weights.
"""

from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.fast import FastMNISTClassifier
from mnist_lightning.models.mlp import MLP

__all__ = ["MLP", "FastMNISTClassifier", "MNISTClassifier", "MNISTDataModule"]
