"""Release 0.1.0's class paths `mnist_lightning.figures.*`, which its configs and checkpoints name; they load as
`mnist_lightning.callbacks.*`, where new configs name them (docs/extending.md, "Class paths")."""

from mnist_lightning.callbacks import TrainingImages, ValidationFigures

__all__ = ["TrainingImages","" "ValidationFigures"]
