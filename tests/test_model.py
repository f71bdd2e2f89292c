"""MNISTClassifier and its MLP: shapes, architecture, hyperparameters, metrics, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mnist_lightning import MLP, MNISTClassifier, MNISTDataModule
from mnist_lightning.errors import CheckpointError, UserInputError
from mnist_lightning.resume import SafeCheckpointIO, load_checkpoint_file


def test_tutorial_net_is_784_50_10_with_relu_between_and_none_on_logits():
    net = MLP()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 50), (50, 10)]
    assert isinstance(net.layers[-1], nn.Linear)  # logits come straight from the last Linear
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 1


def test_output_shape_and_logits_can_be_negative():
    model = MNISTClassifier(hidden_sizes=[32, 16])
    logits = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert (logits < 0).any()  # no ReLU (or other clamp) on the logits


def test_options_build_the_documented_layers():
    net = MLP([64, 32], dropout=0.3, input_dropout=0.1, batch_norm=True)
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds == ["Flatten", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout",
                     "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


def test_hyperparameters_are_saved():
    model = MNISTClassifier(hidden_sizes=[100, 20], lr=3e-4)
    assert model.hparams.hidden_sizes == [100, 20] and model.hparams.lr == 3e-4


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"lr": 0.0}, "lr"), ({"lr": -1e-3}, "lr"), ({"hidden_sizes": []}, "hidden_sizes"),
     ({"hidden_sizes": [50, 0]}, "hidden_sizes"), ({"hidden_sizes": [-5]}, "hidden_sizes"),
     ({"dropout": 1.0}, "dropout"), ({"weight_decay": -1.0}, "weight_decay")],
)
def test_invalid_hyperparameters_are_rejected_naming_the_field(kwargs, field):
    with pytest.raises(UserInputError, match=f"model.{field}"):
        MNISTClassifier(**kwargs)


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = dict(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, plugins=[SafeCheckpointIO()])
    return pl.Trainer(**{**defaults, **kwargs})


def test_fit_logs_the_documented_metrics_and_learns(tiny_data, tmp_path):
    pl.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100)
    model = MNISTClassifier(lr=3e-3)
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert name in metrics, name
    assert metrics["val/acc"] > 0.9  # the fake digits are easy
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    trainer.test(model, dm)
    assert 0.9 < trainer.callback_metrics["test/acc"] <= 1.0


def test_overfitting_a_few_batches_reaches_full_training_accuracy(tiny_data, tmp_path):
    pl.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100)
    trainer = _trainer(tmp_path, max_epochs=40, overfit_batches=2, check_val_every_n_epoch=40)
    trainer.fit(MNISTClassifier(lr=1e-2), dm)
    assert trainer.callback_metrics["train/acc"] == 1.0


def _save_checkpoint(tmp_path: Path, model: MNISTClassifier, tiny_data: Path) -> Path:
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_round_trip_restores_hyperparameters_and_weights(tiny_data, tmp_path):
    model = MNISTClassifier(hidden_sizes=[40, 20])
    path = _save_checkpoint(tmp_path, model, tiny_data)
    loaded = MNISTClassifier.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.hidden_sizes == [40, 20]
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_checkpoint_of_another_architecture_is_refused_with_nothing_loaded(tiny_data, tmp_path):
    path = _save_checkpoint(tmp_path, MNISTClassifier(hidden_sizes=[40]), tiny_data)
    model = MNISTClassifier(hidden_sizes=[50])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"hidden_sizes=\[40\].*hidden_sizes=\[50\].*net.layers.1.weight"):
        model.on_load_checkpoint(load_checkpoint_file(path))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match="does not match"):
        MNISTClassifier.load_from_checkpoint(path, hidden_sizes=[50], weights_only=True)


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def test_checkpoint_with_a_code_running_pickle_is_refused_and_the_code_does_not_run(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _Payload(marker)}}, path)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint_file(path)
    assert not marker.exists()
    # sanity check of the test itself: an unsafe load would have run it
    torch.load(path, weights_only=False)
    assert marker.read_text() == "pwned"


def test_truncated_checkpoint_is_named_and_the_previous_good_one_survives(tiny_data, tmp_path):
    path = _save_checkpoint(tmp_path, MNISTClassifier(), tiny_data)
    good = path.read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint_file(broken)
    assert str(broken) in str(info.value)
    assert load_checkpoint_file(path)["state_dict"]  # the good one is untouched


def test_a_failed_save_raises_and_leaves_the_old_checkpoint_in_place(tmp_path, monkeypatch):
    io = SafeCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, target)
    old = target.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", disk_full)
    with pytest.raises(CheckpointError, match="could not write checkpoint"):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, target)
    assert target.read_bytes() == old
    assert not (tmp_path / "last.ckpt.tmp").exists()


def test_checkpoint_payload_is_plain_data(tiny_data, tmp_path):
    """What the project writes loads with weights_only=True (no pickled objects needed)."""
    path = _save_checkpoint(tmp_path, MNISTClassifier(), tiny_data)
    checkpoint = torch.load(path, weights_only=True)
    assert isinstance(checkpoint["rng_state"]["torch"], torch.Tensor)  # for an exact resume


def test_weight_decay_applies_to_weight_matrices_only():
    model = MNISTClassifier(hidden_sizes=[32], batch_norm=True, optimizer="adamw", weight_decay=0.05)
    groups = model.configure_optimizers().param_groups
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.05 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decayed) == (p.ndim >= 2), name
    tutorial = MNISTClassifier().configure_optimizers()
    assert len(tutorial.param_groups) == 1 and tutorial.param_groups[0]["weight_decay"] == 0


def test_validation_loss_is_the_mean_over_images_not_over_batches(tiny_data, tmp_path):
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100, eval_batch_size=64)  # 64 + 36
    model = MNISTClassifier()
    metrics = _trainer(tmp_path).validate(model, dm, verbose=False)[0]
    x, y = dm.val_set.__getitems__(list(range(100)))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y)
    assert metrics["val/loss"] == pytest.approx(float(expected), rel=1e-5)


# ------------------------------------------------------------------ every Trainer flag works with the idiomatic class
def _fit_idiomatic(tiny_data: Path, tmp_path: Path, model: MNISTClassifier | None = None, **trainer_kwargs) -> pl.Trainer:
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100, batch_size=32)  # 16 batches an epoch
    trainer = _trainer(tmp_path, **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(model or MNISTClassifier(lr=3e-3), dm)
    return trainer


def test_gradient_clipping_bounds_every_update(tiny_data, tmp_path):
    norms = []

    class GradNorm(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the gradients that were applied
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    _fit_idiomatic(tiny_data, tmp_path, MNISTClassifier(lr=0.5), gradient_clip_val=0.01, callbacks=[GradNorm()])
    assert norms and max(norms) <= 0.01 + 1e-6  # Lightning clipped before every step


def test_gradient_accumulation_halves_the_optimizer_steps(tiny_data, tmp_path):
    trainer = _fit_idiomatic(tiny_data, tmp_path, accumulate_grad_batches=2)
    assert trainer.global_step == 2 * 16 // 2


def test_validation_inside_an_epoch(tiny_data, tmp_path):
    runs = []

    class CountValidations(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                runs.append(trainer.global_step)

    _fit_idiomatic(tiny_data, tmp_path, val_check_interval=4, callbacks=[CountValidations()])
    assert runs == [4, 8, 12, 16, 20, 24, 28, 32]


def test_learning_rate_monitor_logs_a_per_batch_schedule_every_step(tiny_data, tmp_path):
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    model = MNISTClassifier(lr=3e-3, lr_schedule="onecycle")
    _fit_idiomatic(tiny_data, tmp_path, model, logger=CSVLogger(tmp_path), log_every_n_steps=1,
                   callbacks=[LearningRateMonitor(logging_interval="step")])
    import csv

    rows = list(csv.DictReader(open(next(tmp_path.rglob("metrics.csv")))))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert len(lrs) == 32  # one per optimizer step: the scheduler steps per batch ("interval": "step")
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[0] < lrs[10] and lrs[-1] < lrs[16]


def test_max_steps_stops_at_exactly_that_step(tiny_data, tmp_path):
    assert _fit_idiomatic(tiny_data, tmp_path, max_steps=7).global_step == 7


def test_bf16_mixed_precision_trains_on_cpu(tiny_data, tmp_path):
    trainer = _fit_idiomatic(tiny_data, tmp_path, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed" and trainer.callback_metrics["val/acc"] > 0.5


def test_a_scheduler_stepped_per_epoch_is_stepped_per_epoch(tiny_data, tmp_path):
    class StepLRPerEpoch(MNISTClassifier):
        def configure_optimizers(self):
            optimizer = torch.optim.Adam(self.parameters(), lr=1e-2)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5), "interval": "epoch"}}

    model = StepLRPerEpoch()
    trainer = _fit_idiomatic(tiny_data, tmp_path, model, max_epochs=3)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**3)
