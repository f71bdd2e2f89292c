"""MNISTClassifier and its MLP: shapes, architecture, hyperparameters, metrics, checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from mnist_lightning import MLP, MNISTClassifier, MNISTDataModule
from mnist_lightning.checkpointing import SafeCheckpointIO, load_checkpoint_file
from mnist_lightning.errors import CheckpointError, UserInputError


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


# ------------------------------------------------------------------ several batches per training_step call
def _fit_weights(tiny_data: Path, tmp_path: Path, steps_per_call: int, **trainer_kwargs) -> tuple[dict, pl.Trainer]:
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100, batch_size=32)
    # Dropout and a per-batch schedule: the global RNG stream and the scheduler steps must line up too.
    model = MNISTClassifier(steps_per_call=steps_per_call, dropout=0.2, lr_schedule="onecycle", lr=3e-3)
    trainer = _trainer(tmp_path / f"k{steps_per_call}", **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(model, dm)
    return {k: v.clone() for k, v in model.state_dict().items()}, trainer


def test_several_batches_per_call_make_exactly_the_updates_of_one_batch_per_call(tiny_data, tmp_path):
    # 500 training images / 32 = 16 batches an epoch: calls of 3 leave a short last call (16 = 5 x 3 + 1).
    one, trainer_one = _fit_weights(tiny_data, tmp_path, steps_per_call=1)
    for k in (3, 10):
        several, trainer = _fit_weights(tiny_data, tmp_path, steps_per_call=k)
        assert trainer.global_step == trainer_one.global_step == 2 * 16  # optimizer steps, whatever k
        for name, value in one.items():
            assert torch.equal(value, several[name]), (k, name)
        for metric in ("train/acc", "val/acc"):  # same predictions; train/loss may differ in the last bit
            assert trainer.callback_metrics[metric] == trainer_one.callback_metrics[metric], (k, metric)
        assert trainer.callback_metrics["train/loss"] == pytest.approx(float(trainer_one.callback_metrics["train/loss"]))


def test_limits_and_max_steps_count_batches_not_calls(tiny_data, tmp_path):
    _, limited = _fit_weights(tiny_data, tmp_path, steps_per_call=10, limit_train_batches=3)
    assert limited.global_step == 2 * 3
    _, stopped = _fit_weights(tiny_data, tmp_path, steps_per_call=10, max_steps=7)
    assert stopped.global_step == 7  # not rounded up to a whole call


def test_validation_inside_an_epoch_asks_for_one_batch_per_call(tiny_data, tmp_path):
    with pytest.raises(UserInputError, match="--model.steps_per_call 1"):
        _fit_weights(tiny_data, tmp_path, steps_per_call=4, val_check_interval=0.5)
    _, trainer = _fit_weights(tiny_data, tmp_path, steps_per_call=1, val_check_interval=0.5)
    assert trainer.global_step == 2 * 16


def test_steps_per_call_must_be_a_positive_integer():
    for bad in (0, -2):
        with pytest.raises(UserInputError, match="model.steps_per_call"):
            MNISTClassifier(steps_per_call=bad)
