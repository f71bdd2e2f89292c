"""Release 0.1.0's class paths `mnist_lightning.fast.*`, which its configs and checkpoints name; they load as
`mnist_lightning.models.*`, where new configs name them (docs/extending.md, "Class paths")."""

from mnist_lightning.models import FastMNISTClassifier

__all__ = ["FastMNISTClassifier"]
