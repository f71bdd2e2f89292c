"""What distinguishes MNIST, Fashion-MNIST and KMNIST: files, checksums, statistics, class names.

All three share the IDX format, the 60,000/10,000 split and 28x28 grey images, so one DataModule
serves them; only this table differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torchvision


@dataclass(frozen=True)
class IdxFile:
    """One of the four official files of a dataset."""

    name: str  # decompressed file name, e.g. "train-images-idx3-ubyte"
    count: int  # number of images or labels it must hold
    sha256: str | None = None  # of the decompressed content, where the official value is known
    gz_md5: str | None = None  # of the official .gz (torchvision's value), checked when given a .gz

    @property
    def is_images(self) -> bool:
        return "images" in self.name


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    torchvision_class: type[torchvision.datasets.MNIST]
    mean: float  # of the training pixels after /255, for `normalize=True`
    std: float
    classes: tuple[str, ...]
    files: tuple[IdxFile, IdxFile, IdxFile, IdxFile]  # train images, train labels, test images, test labels

    @property
    def raw_folder(self) -> str:
        """torchvision's layout: <data_dir>/<ClassName>/raw/."""
        return f"{self.torchvision_class.__name__}/raw"


def _files(sha: dict[str, str], md5: dict[str, str]) -> tuple[IdxFile, IdxFile, IdxFile, IdxFile]:
    names = [
        ("train-images-idx3-ubyte", 60_000),
        ("train-labels-idx1-ubyte", 60_000),
        ("t10k-images-idx3-ubyte", 10_000),
        ("t10k-labels-idx1-ubyte", 10_000),
    ]
    return tuple(IdxFile(n, c, sha.get(n), md5.get(n)) for n, c in names)  # type: ignore[return-value]


def _torchvision_md5(cls: type) -> dict[str, str]:
    return {filename.removesuffix(".gz"): md5 for filename, md5 in cls.resources}


# SHA-256 of the decompressed official MNIST files (../shared/data/mnist/README.md).
_MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        torchvision_class=torchvision.datasets.MNIST,
        mean=0.1307,
        std=0.3081,
        classes=tuple(str(d) for d in range(10)),
        files=_files(_MNIST_SHA256, _torchvision_md5(torchvision.datasets.MNIST)),
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        torchvision_class=torchvision.datasets.FashionMNIST,
        mean=0.2860,
        std=0.3530,
        classes=tuple(torchvision.datasets.FashionMNIST.classes),
        files=_files({}, _torchvision_md5(torchvision.datasets.FashionMNIST)),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        torchvision_class=torchvision.datasets.KMNIST,
        mean=0.1918,
        std=0.3483,
        classes=tuple(torchvision.datasets.KMNIST.classes),
        files=_files({}, _torchvision_md5(torchvision.datasets.KMNIST)),
    ),
}
