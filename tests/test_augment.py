"""Training-batch augmentation (`--data.augment`): only training batches are transformed, by a seeded stream
that a checkpoint fixes; off by default; the same with the fast class; a TensorBoard grid shows what the net is
fed. (The bit-identical resume after SIGKILL with augmentation on: tests/test_resume.py.)"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import PROJECT_ROOT, TINY_ARGS, RunProbe, hparams_row, image_keys, probe_args, run_cli
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lightning import MLP, MNISTClassifier, MNISTDataModule
from mnist_lightning.data.augment import AffineJitter, ElasticJitter, TrainingAugmentation
from mnist_lightning.models.fast import FastMNISTClassifier
from mnist_lightning.sweeps.fit_options import parse_fit

AUGMENT_CONFIG = str(PROJECT_ROOT / "configs" / "augment.yaml")
# Strong enough that hardly any training image keeps all its pixels.
STRONG = ("--data.augment", "mnist_lightning.data.AffineJitter", "--data.augment.init_args.rotation", "30",
          "--data.augment.init_args.shift", "3")
VAL_SIZE = 100


def _batches(dm: MNISTDataModule, epoch: int = 0) -> list[torch.Tensor]:
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)  # as Lightning does before each epoch
    return [x for x, _ in loader]


def _datamodule(data_dir: Path, seed: int, **kwargs) -> MNISTDataModule:
    pl.seed_everything(seed)  # the run's seed: shuffling and augmentation derive from it
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=VAL_SIZE, batch_size=100, **kwargs)
    dm.setup("fit")
    return dm


# ----------------------------------------------------------------------------------- only training batches
def test_augmentation_never_touches_validation_test_or_predict_batches(shared_tiny_data: Path, tmp_path: Path) -> None:
    """Fit, test and predict all given `--data.augment`: the training batches are transformed, every
    validation, test and predict batch holds the images exactly as they are."""
    raw = image_keys(shared_tiny_data, VAL_SIZE)
    fit_probe, test_probe, predict_probe = tmp_path / "fit", tmp_path / "test", tmp_path / "predict"
    fit = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, *STRONG, "--trainer.max_epochs", "1",
                  *probe_args(fit_probe), cwd=tmp_path)
    assert fit.returncode == 0, fit.stderr[-3000:]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    common = ("--ckpt_path", str(last), "--data.data_dir", str(shared_tiny_data), "--data.verify", "false", *STRONG,
              "--trainer.enable_progress_bar", "false", "--trainer.logger", "false")
    assert run_cli("test", *common, *probe_args(test_probe), cwd=tmp_path).returncode == 0
    predict_probe.mkdir()
    predict = run_cli("predict", *common, "--trainer.callbacks+=test_augment.PredictProbe",
                      "--trainer.callbacks.out_dir", str(predict_probe), cwd=tmp_path)
    assert predict.returncode == 0, predict.stderr[-3000:]

    seen = _read(fit_probe / "fit-rank0.json")
    trained = seen["train/0"]
    assert len(trained) == 500
    assert len(set(trained) & raw["train"]) < 25, "the training batches were not augmented"
    assert seen["val/0"] and set(seen["val/0"]) == raw["val"]  # (the sanity check is not recorded)
    assert set(_read(test_probe / "test-rank0.json")["test"]) == raw["test"]
    assert set(_read(predict_probe / "predict.json")["predict"]) == raw["test"]


def _read(path: Path) -> dict:
    import json

    return json.loads(path.read_text())["seen"]


class PredictProbe(RunProbe):
    """conftest's RunProbe, also recording what `predict` is fed."""

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        self.seen["predict"] += self._keys(batch)

    def teardown(self, trainer, pl_module, stage) -> None:
        import json

        (Path(self.out_dir) / "predict.json").write_text(json.dumps({"seen": self.seen}))


# ----------------------------------------------------------------------------------- off by default
def test_the_default_and_the_tutorial_configs_do_not_augment() -> None:
    for configs in ([], ["--config", str(PROJECT_ROOT / "configs" / "seed.yaml")],
                    ["--config", str(PROJECT_ROOT / "configs" / "mlp_best.yaml")]):
        assert parse_fit(configs).data.augment is None, configs


def test_without_augment_the_training_batches_are_the_images_bit_for_bit(shared_tiny_data: Path) -> None:
    """Off, the loader hands over exactly the dataset's own batches in the sampler's order: no resampling, no
    arithmetic on the pixels, so the weights are those of a run before augmentation existed."""
    dm = _datamodule(shared_tiny_data, seed=0, normalize=True)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    order = list(loader.sampler)
    for i, (x, y) in enumerate(loader):
        expected_x, expected_y = dm.train_set.__getitems__(order[100 * i : 100 * (i + 1)])
        assert torch.equal(x, expected_x) and torch.equal(y, expected_y), i


def test_augmentation_draws_nothing_from_the_global_random_stream(shared_tiny_data: Path) -> None:
    """Dropout draws from torch's global generator: an augmentation that drew from it too would change every
    later dropout mask, and the weights of a run would depend on whether it augments in more than one way."""
    for augment in (None, AffineJitter(), ElasticJitter()):
        dm = _datamodule(shared_tiny_data, seed=0, augment=augment)
        before = torch.get_rng_state()
        _batches(dm)
        assert torch.equal(torch.get_rng_state(), before), augment


# ----------------------------------------------------------------------------------- the random stream
def test_same_seed_same_augmented_batches_other_seed_epoch_or_rank_other_ones(shared_tiny_data: Path) -> None:
    first = _batches(_datamodule(shared_tiny_data, seed=0, augment=AffineJitter()))
    again = _batches(_datamodule(shared_tiny_data, seed=0, augment=AffineJitter()))
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    # The same images under another seed, epoch, batch index or DDP rank get other draws: the jitter of an
    # image is never repeated from epoch to epoch, nor shared by the processes of a DDP run.
    images = _datamodule(shared_tiny_data, seed=0).train_set.__getitems__(list(range(100)))[0]
    keys = [(0, 0, 0, 0), (1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0), (0, 0, 0, 1)]  # seed, rank, epoch, batch
    drawn = {key: TrainingAugmentation(AffineJitter(), key[0]).images(images, *key[1:]) for key in keys}
    assert torch.equal(drawn[0, 0, 0, 0], TrainingAugmentation(AffineJitter(), 0).images(images, 0, 0, 0))
    for key, value in drawn.items():
        if key != (0, 0, 0, 0):
            assert not torch.equal(value, drawn[0, 0, 0, 0]), key


def test_normalised_images_keep_their_background(shared_tiny_data: Path) -> None:
    """With `data.normalize` a blank pixel is -mean/std, not 0: a shifted digit must not bring in a frame of
    another grey (what grid_sample's zero padding alone would give)."""
    dm = _datamodule(shared_tiny_data, seed=0, normalize=True, augment=AffineJitter(rotation=0, scale=0, shift=4))
    blank = -dm.spec.mean / dm.spec.std
    images = torch.full((4, 1, 28, 28), blank)
    shifted = dm._augmentation().images(images, 0, 0, 0)
    assert torch.allclose(shifted, images, atol=1e-5)


# ----------------------------------------------------------------------------------- the fast class
def _fit(data_dir: Path, tmp_path: Path, steps_per_call: int | None) -> dict[str, torch.Tensor]:
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=VAL_SIZE, batch_size=32, augment=AffineJitter())
    parts = dict(net=MLP(dropout=0.2))
    model = MNISTClassifier(**parts) if steps_per_call is None else FastMNISTClassifier(steps_per_call, **parts)
    trainer = pl.Trainer(default_root_dir=tmp_path / f"k{steps_per_call}", accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         max_epochs=2)
    trainer.fit(model, dm)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_the_fast_class_trains_on_the_same_augmented_batches(shared_tiny_data: Path, tmp_path: Path) -> None:
    """FastMNISTClassifier bypasses Lightning's batch hooks; the augmentation lives in the loader, so it ends
    with the idiomatic class's weights bit for bit, augmented batches and all."""
    idiomatic, fast = _fit(shared_tiny_data, tmp_path, None), _fit(shared_tiny_data, tmp_path, 5)
    plain_dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=VAL_SIZE, batch_size=32)
    pl.seed_everything(3)
    model = MNISTClassifier(net=MLP(dropout=0.2))
    pl.Trainer(default_root_dir=tmp_path / "plain", accelerator="cpu", logger=False, enable_progress_bar=False,
               enable_model_summary=False, enable_checkpointing=False, max_epochs=2).fit(model, plain_dm)
    assert any(not torch.equal(v, idiomatic[k]) for k, v in model.state_dict().items())  # augmenting changed them
    for name, value in idiomatic.items():
        assert torch.equal(value, fast[name]), name


# ----------------------------------------------------------------------------------- what the run records
@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory: pytest.TempPathFactory, shared_tiny_data: Path) -> Path:
    """A 1-epoch fit with configs/augment.yaml (AffineJitter and the TrainingImages grid)."""
    workdir = tmp_path_factory.mktemp("augmented")
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--config", AUGMENT_CONFIG,
                     "--trainer.max_epochs", "1", "--torch_threads", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir / "lightning_logs" / "version_0"


def test_the_grid_of_augmented_training_images_is_written_to_tensorboard_once(augmented_run: Path) -> None:
    acc = EventAccumulator(str(augmented_run), size_guidance={"images": 0})
    acc.Reload()
    assert "train/images" in acc.Tags()["images"], acc.Tags()["images"]
    (event,) = acc.Images("train/images")  # once per run, from its first batch
    assert event.step == 0
    grid = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("L"))
    assert 200 <= grid.shape[1] <= 2000 and len(np.unique(grid)) > 2, grid.shape


def test_the_augmentation_is_in_the_checkpoint_and_the_hparams_row(augmented_run: Path) -> None:
    """A resume checks it (and refuses another), evaluation ignores it, HPARAMS shows it, weights-only loadable."""
    saved = torch.load(augmented_run / "checkpoints" / "last.ckpt", weights_only=True)["datamodule_hyper_parameters"]
    assert saved["augment"] == {"class_path": "mnist_lightning.data.AffineJitter",
                                "init_args": {"rotation": 8.0, "scale": 0.08, "shift": 2.0}}
    row = hparams_row(augmented_run)
    assert row["data.augment"] == "mnist_lightning.data.AffineJitter"
    assert row["data.augment.init_args.rotation"] == pytest.approx(8.0)


def test_a_resume_refuses_another_augmentation_naming_the_setting(augmented_run: Path, tmp_path: Path) -> None:
    import shutil

    shutil.copytree(augmented_run.parent, tmp_path / "lightning_logs")
    run_dir = tmp_path / "lightning_logs" / "version_0"
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    result = run_cli("fit", "--config", str(run_dir / "config.yaml"), "--ckpt_path", "last",
                     "--data.augment.init_args.rotation", "4", cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert ("resuming with data.augment.init_args.rotation=4.0, but the checkpoint was trained with "
            "data.augment.init_args.rotation=8.0") in result.stderr
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


CROPPING_AUGMENT = '''
import torch
from mnist_lightning.data import BatchAugment


class Crop(BatchAugment):
    """A user's augmentation that (wrongly) returns smaller images."""

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return images[..., 2:-2, 2:-2]
'''


def test_an_augmentation_that_changes_the_batch_shape_is_one_line(shared_tiny_data: Path, tmp_path: Path) -> None:
    (tmp_path / "my_augment.py").write_text(CROPPING_AUGMENT)
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--data.augment", "my_augment.Crop",
                     cwd=tmp_path, env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: data.augment my_augment.Crop turned a batch (64, 1, 28, 28)"), last
    assert "(64, 1, 24, 24)" in last and "shape and dtype it was given" in last
