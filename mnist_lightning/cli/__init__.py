"""The command line: the LightningCLI subclass and what only it needs (run folders, what a checkpoint fixes,
the console)."""

from mnist_lightning.cli.cli import MNISTLightningCLI

__all__ = ["MNISTLightningCLI"]
