"""The MNIST family in one DataModule: --data.dataset mnist|fashion_mnist|kmnist."""

from __future__ import annotations

import csv

import pytest
import torch
from conftest import TINY_ARGS, run_cli, write_idx_dataset

from mnist_lightning import MNISTDataModule
from mnist_lightning.datasets import DATASETS
from mnist_lightning.errors import DataFileError

RAW_FOLDERS = {"mnist": "MNIST/raw", "fashion_mnist": "FashionMNIST/raw", "kmnist": "KMNIST/raw"}


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_each_dataset_loads_from_its_offline_folder(tmp_path, dataset, layout):
    data_dir = write_idx_dataset(tmp_path / dataset, layout=layout, raw_folder=RAW_FOLDERS[dataset])
    dm = MNISTDataModule(data_dir=str(data_dir), dataset=dataset, verify=False, val_size=100, normalize=True)
    dm.prepare_data()
    dm.setup("fit")
    spec = DATASETS[dataset]
    assert len(dm.classes) == 10 and dm.classes == spec.classes
    x, _ = dm.val_set.__getitems__([0])
    raw = dm.val_set.images[0].float() / 255
    torch.testing.assert_close(x[0, 0], (raw - spec.mean) / spec.std)  # the dataset's own constants


def test_the_datasets_have_their_own_names_statistics_and_checksums():
    fashion, kmnist, mnist = DATASETS["fashion_mnist"], DATASETS["kmnist"], DATASETS["mnist"]
    assert fashion.classes[1] == "Trouser" and kmnist.classes[0] == "o" and mnist.classes[7] == "7"
    assert len({fashion.mean, kmnist.mean, mnist.mean}) == 3
    assert fashion.files[0].gz_md5 != kmnist.files[0].gz_md5


def test_another_datasets_layout_is_not_mistaken_for_this_one(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "d", layout="torchvision", raw_folder="KMNIST/raw")
    with pytest.raises(DataFileError, match="fashion_mnist files are not in"):
        dm = MNISTDataModule(data_dir=str(data_dir), dataset="fashion_mnist", verify=False)
        dm.setup("fit")


def test_unofficial_gz_files_fail_the_checksum_of_their_dataset(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "d", layout="torchvision", raw_folder="FashionMNIST/raw")
    with pytest.raises(DataFileError, match="not the official train-images-idx3-ubyte.gz: MD5"):
        MNISTDataModule(data_dir=str(data_dir), dataset="fashion_mnist").prepare_data()


def test_fashion_mnist_end_to_end_with_class_names_in_predictions(tmp_path):
    data_dir = write_idx_dataset(tmp_path / "fashion", layout="torchvision", raw_folder="FashionMNIST/raw")
    fit = run_cli("fit", "--data.dataset", "fashion_mnist", "--data.data_dir", str(data_dir), *TINY_ARGS,
                  "--trainer.max_epochs", "1", "--torch_threads", "1", cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    out_csv = tmp_path / "predictions.csv"
    # The dataset comes from the checkpoint: no --data.dataset here.
    predict = run_cli("predict", "--ckpt_path", str(last), "--data.data_dir", str(data_dir), *TINY_ARGS,
                      "--predictions_csv", str(out_csv), cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 200
    assert {row["prediction"] for row in rows} <= set(DATASETS["fashion_mnist"].classes)
