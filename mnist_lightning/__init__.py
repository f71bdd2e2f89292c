"""mnist-lightning: the fully connected MNIST tutorial as a clean, fast, reproducible Lightning project."""

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.gpu_probe import skip_nvml_check_without_driver
from mnist_lightning.model import MLP, MNISTClassifier

skip_nvml_check_without_driver()  # after Lightning's import, which sets the flag

__all__ = ["MLP", "MNISTClassifier", "MNISTDataModule"]
