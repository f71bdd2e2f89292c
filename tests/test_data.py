"""MNISTDataModule: finding, verifying, splitting and batching the data."""

from __future__ import annotations

import dis
import gzip
import importlib
import importlib.machinery
import importlib.util
import shutil
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision
from conftest import IDX_NAMES, run_cli, write_idx_dataset
from torchvision import transforms

from mnist_lightning import MNISTDataModule
from mnist_lightning.data.augment import AffineJitter
from mnist_lightning.data.datamodule import split_order
from mnist_lightning.data.digits import InMemoryDigits
from mnist_lightning.data.loaders import ResumableDataLoader
from mnist_lightning.errors import DataFileError, UserInputError


def split_indices(n: int, val_size: int, seed: int) -> tuple[list[int], list[int]]:
    """The data module's train and validation indices: the first n - val_size of its seeded order, then the rest."""
    order = split_order(n, seed).tolist()
    return order[: n - val_size], order[n - val_size :]


def make_dm(data_dir: Path, **kwargs) -> MNISTDataModule:
    kwargs = {"verify": False, "val_size": 100, **kwargs}
    dm = MNISTDataModule(data_dir=str(data_dir), **kwargs)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_split_sizes_and_test_set_untouched(shared_tiny_data):
    dm = make_dm(shared_tiny_data)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (500, 100, 200)


def test_train_and_val_are_disjoint_and_cover_the_training_images():
    train, val = split_indices(600, 100, seed=42)
    assert set(train).isdisjoint(val)
    assert sorted(train + val) == list(range(600))


def test_same_split_for_the_same_seed_and_another_for_another_seed(shared_tiny_data):
    a, b, c = make_dm(shared_tiny_data), make_dm(shared_tiny_data), make_dm(shared_tiny_data, split_seed=7)
    assert torch.equal(a.val_set.images, b.val_set.images)
    assert not torch.equal(a.val_set.images, c.val_set.images)


def test_split_matches_torch_random_split():
    """The split is exactly what torch's random_split gives with the same generator seed."""
    train, val = split_indices(600, 100, seed=3)
    ref_train, ref_val = torch.utils.data.random_split(range(600), [500, 100],
                                                       generator=torch.Generator().manual_seed(3))
    assert train == list(ref_train) and val == list(ref_val)


def test_batch_shapes_dtypes_and_range(shared_tiny_data):
    dm = make_dm(shared_tiny_data)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() == 1.0  # ToTensor's range, no normalisation
    xv, _ = next(iter(dm.val_dataloader()))
    assert xv.shape[1:] == (1, 28, 28)


def test_normalize_uses_the_dataset_mean_and_std(shared_tiny_data):
    plain, normed = make_dm(shared_tiny_data), make_dm(shared_tiny_data, normalize=True)
    x = plain.val_set.__getitems__(list(range(10)))[0]
    xn = normed.val_set.__getitems__(list(range(10)))[0]
    torch.testing.assert_close(xn, (x - 0.1307) / 0.3081)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("gz", [True, False])
def test_both_layouts_gzipped_or_not(tmp_path, layout, gz):
    data_dir = write_idx_dataset(tmp_path / "d", gz=gz, layout=layout)
    reference = make_dm(write_idx_dataset(tmp_path / "ref"))
    dm = make_dm(data_dir)
    assert torch.equal(dm.train_set.images, reference.train_set.images)
    assert torch.equal(dm.test_set.labels, reference.test_set.labels)


def test_setup_is_idempotent(shared_tiny_data):
    dm = make_dm(shared_tiny_data)
    train, val, test = dm.train_set, dm.val_set, dm.test_set
    dm.setup("fit")
    dm.setup("test")
    assert dm.train_set is train and dm.val_set is val and dm.test_set is test


def test_training_order_is_reproducible_per_epoch_and_differs_between_epochs(shared_tiny_data):
    def first_labels(epoch: int) -> torch.Tensor:
        loader = make_dm(shared_tiny_data).train_dataloader()
        loader.sampler.set_epoch(epoch)
        return next(iter(loader))[1]

    assert torch.equal(first_labels(0), first_labels(0))
    assert not torch.equal(first_labels(0), first_labels(1))


def test_training_loader_is_shuffled_and_resumable(shared_tiny_data):
    loader = make_dm(shared_tiny_data).train_dataloader()
    assert isinstance(loader, ResumableDataLoader)
    assert isinstance(loader.sampler, torch.utils.data.RandomSampler)  # Lightning sees a shuffled loader
    full = [y for _, y in loader]
    assert len(full) == 8 and loader.state_dict() == {"epoch": 0, "batches": 8}
    loader.load_state_dict({"epoch": 0, "batches": 3})
    rest = [y for _, y in loader]
    assert len(rest) == 5 and all(torch.equal(a, b) for a, b in zip(rest, full[3:], strict=True))


def test_in_memory_batches_equal_the_torchvision_pipeline(tmp_path):
    """The fast path yields exactly torchvision's MNIST + ToTensor (+ Normalize) tensors, same split."""
    data_dir = write_idx_dataset(tmp_path / "d", gz=False, layout="torchvision")
    for normalize in (False, True):
        dm = make_dm(data_dir, normalize=normalize)
        steps = [transforms.ToTensor()] + ([transforms.Normalize((0.1307,), (0.3081,))] if normalize else [])
        reference = torchvision.datasets.MNIST(str(data_dir), train=True, transform=transforms.Compose(steps))
        train_idx, val_idx = split_indices(len(reference), 100, seed=42)
        ref_train, ref_val = torch.utils.data.Subset(reference, train_idx), torch.utils.data.Subset(reference, val_idx)
        for ours, theirs in ((dm.train_set, ref_train), (dm.val_set, ref_val)):
            x, y = ours.__getitems__(list(range(len(ours))))
            ref_x = torch.stack([theirs[i][0] for i in range(len(theirs))])
            ref_y = torch.tensor([theirs[i][1] for i in range(len(theirs))])
            assert torch.equal(x, ref_x) and torch.equal(y, ref_y)
        classic = make_dm(data_dir, normalize=normalize, pipeline="torchvision")
        assert torch.equal(classic.val_set[5][0], dm.val_set[5][0])
        batch_x, _ = next(iter(classic.val_dataloader()))
        assert torch.equal(batch_x, dm.val_set.__getitems__(list(range(len(batch_x))))[0])


def test_in_memory_dataset_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="uint8"):
        InMemoryDigits(torch.zeros(3, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="3 images but 2 labels"):
        InMemoryDigits(torch.zeros(3, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long))


# ----------------------------------------------------------------------------- bad input
def _corrupt(data_dir: Path, name: str, transform) -> Path:
    path = data_dir / f"{name}.gz"
    path.write_bytes(gzip.compress(transform(gzip.decompress(path.read_bytes()))))
    return path


@pytest.mark.parametrize(
    ("name", "transform", "message"),
    [
        ("train-images-idx3-ubyte", lambda b: b[:-100], "truncated"),
        ("train-images-idx3-ubyte", lambda b: b[:10], "truncated"),
        ("t10k-labels-idx1-ubyte", lambda b: (0x803).to_bytes(4, "big") + b[4:], "magic number"),
        ("train-labels-idx1-ubyte", lambda b: b[:4] + (599).to_bytes(4, "big") + b[8:-1], "holds 600 images but"),
        ("train-labels-idx1-ubyte", lambda b: b[:-1] + bytes([12]), "label 12"),
        ("train-images-idx3-ubyte", lambda b: b + b"extra", "too long"),
    ],
)
def test_corrupt_files_are_named_in_a_clear_error(tiny_data, name, transform, message):
    path = _corrupt(tiny_data, name, transform)
    with pytest.raises(DataFileError, match=message) as info:
        make_dm(tiny_data)
    assert str(path) in str(info.value)


def test_a_gz_that_is_not_gzip_is_named(tiny_data):
    path = tiny_data / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(b"<html>not found</html>")
    with pytest.raises(DataFileError, match="not a gzip file") as info:
        make_dm(tiny_data)
    assert str(path) in str(info.value)


def test_a_truncated_gzip_is_named(tiny_data):
    path = tiny_data / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataFileError, match="truncated or corrupt gzip") as info:
        make_dm(tiny_data)
    assert str(path) in str(info.value)


class _CompiledAsUnderPythonO(importlib.machinery.SourceFileLoader):
    """Compiles a module from its source as `python -O` does: assert statements gone, __debug__ False
    (and no cached bytecode read or written)."""

    def get_code(self, fullname: str):
        path = self.get_filename(fullname)
        return compile(self.get_data(path), path, "exec", dont_inherit=True, optimize=1)


class _ProjectUnderPythonO:
    """Import finder: the project's modules through `_CompiledAsUnderPythonO`, everything else as usual."""

    @staticmethod
    def find_spec(name: str, path=None, target=None):
        if name != "mnist_lightning" and not name.startswith("mnist_lightning."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.origin is None:
            return None
        return importlib.util.spec_from_file_location(name, spec.origin,
                                                      loader=_CompiledAsUnderPythonO(name, spec.origin),
                                                      submodule_search_locations=spec.submodule_search_locations)


@contextmanager
def project_as_under_python_O() -> Iterator[ModuleType]:
    """The project imported afresh as `python -O` would compile it (the package module is yielded); the
    modules of the rest of the session are put back afterwards. In this process: a `python -O`
    process would spend most of a minute compiling torch and Lightning without their cached bytecode."""
    def ours() -> list[str]:
        return [n for n in sys.modules if n == "mnist_lightning" or n.startswith("mnist_lightning.")]

    saved = {name: sys.modules.pop(name) for name in ours()}
    sys.meta_path.insert(0, _ProjectUnderPythonO)
    try:
        yield importlib.import_module("mnist_lightning")
    finally:
        sys.meta_path.remove(_ProjectUnderPythonO)
        for name in ours():
            del sys.modules[name]
        sys.modules.update(saved)


def _asserts(function) -> int:
    return sum(i.opname == "LOAD_ASSERTION_ERROR" for i in dis.get_instructions(function))


def test_checks_survive_python_O(tiny_data):
    """Header checks are real errors, not asserts (which `python -O` removes)."""
    _corrupt(tiny_data, "train-images-idx3-ubyte", lambda b: b[:-100])
    with project_as_under_python_O() as optimized:
        errors = importlib.import_module("mnist_lightning.errors")
        data = importlib.import_module("mnist_lightning.data")
        # The test's own premise: the project code it runs has its asserts stripped, as under -O.
        assert _asserts(MNISTDataModule._eval_loader) == 1 and _asserts(data.MNISTDataModule._eval_loader) == 0
        with pytest.raises(errors.DataFileError, match="truncated"):
            optimized.MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100).prepare_data()


def test_unofficial_files_fail_verification_with_the_fix_named(tiny_data):
    with pytest.raises(DataFileError, match="--data.verify false"):
        MNISTDataModule(data_dir=str(tiny_data)).prepare_data()


def test_missing_files_offline_give_one_clear_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataFileError) as info:
        MNISTDataModule(data_dir=str(tmp_path / "nothing")).prepare_data()
    message = str(info.value)
    for name in IDX_NAMES:
        assert name in message
    assert "--data.data_dir" in message


@pytest.mark.parametrize(("option", "value"), [("--data.batch_size", "0"), ("--data.val_size", "-1"),
                                             ("--data.num_workers", "-1"), ("--data.dataset", "cifar")])
def test_invalid_values_are_rejected_naming_the_field(option, value, tmp_path):
    """The types of MNISTDataModule's arguments (PositiveInt, NonNegativeInt, Literal) bound them: the CLI refuses a
    value outside them, naming the setting, before anything is built or written."""
    result = run_cli("fit", option, value, "--print_config", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert option.removeprefix("--") in result.stderr, result.stderr
    assert not (tmp_path / "lightning_logs").exists()


def test_val_size_not_smaller_than_the_training_set_is_rejected(shared_tiny_data):
    dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=600)
    with pytest.raises(UserInputError, match="val_size must be smaller than the 600 training images"):
        dm.setup("fit")


@pytest.mark.real_data
def test_real_mnist_files_verify_and_match_the_known_facts(real_data, tmp_path):
    dm = MNISTDataModule(data_dir=str(real_data))
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    train_labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(train_labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert torch.bincount(dm.test_set.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    pixels = torch.cat([dm.train_set.images, dm.val_set.images]).float() / 255
    assert round(pixels.mean().item(), 4) == 0.1307 and round(pixels.std().item(), 4) == 0.3081
    # one flipped byte in a copy: the SHA-256 check names the file
    copy = tmp_path / "mnist"
    shutil.copytree(real_data, copy)
    labels = copy / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DataFileError, match="SHA-256") as info:
        MNISTDataModule(data_dir=str(copy)).prepare_data()
    assert str(labels) in str(info.value)


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "kmnist"])
def test_fixed_settings_are_the_declared_ones_and_every_dataset_has_ten_classes(dataset):
    """What a checkpoint fixes (evaluation inherits it, a resume refuses changes, HPARAMS shows it) is
    exactly what the data module declares; the net's outputs follow the dataset."""
    dm = MNISTDataModule(dataset=dataset, normalize=True, split_seed=7, val_size=300, batch_size=32)
    declared = (*MNISTDataModule.INPUT_SETTINGS, *MNISTDataModule.SPLIT_SETTINGS, *MNISTDataModule.RESUME_SETTINGS)
    assert set(declared) == {"dataset", "normalize", "deskew", "split_seed", "val_size", "batch_size", "augment"}
    assert dm.fixed_settings() == {"dataset": dataset, "normalize": True, "deskew": False, "split_seed": 7,
                                   "val_size": 300, "batch_size": 32, "augment": None}
    assert list(dm.fixed_settings()) == list(declared)
    # A class-path setting is flat, as on the command line: its class path and each init arg.
    augmented = MNISTDataModule(dataset=dataset, augment=AffineJitter(rotation=5)).fixed_settings()
    assert {k: v for k, v in augmented.items() if k.startswith("augment")} == {
        "augment": "mnist_lightning.data.AffineJitter", "augment.init_args.rotation": 5.0,
        "augment.init_args.scale": 0.08, "augment.init_args.shift": 2.0}
    assert dm.num_classes == 10 == len(dm.classes)
