"""The rails that hook into the Trainer, each a Lightning callback of its own, so the module stays the recipe.

Public class paths: `mnist_lightning.callbacks.ValidationFigures`, `.TrainingImages`, `.ResumeCheckpoint`,
`.PredictionTable`.
"""

from mnist_lightning.callbacks.figures import TrainingImages, ValidationFigures
from mnist_lightning.callbacks.predictions import PredictionTable
from mnist_lightning.callbacks.resume import ResumeCheckpoint

__all__ = ["PredictionTable", "ResumeCheckpoint", "TrainingImages", "ValidationFigures"]
