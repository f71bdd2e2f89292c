"""MNISTClassifier and its parts: the MLP, injected nets, optimizers and schedules, hyperparameters,
metrics, checkpoints."""

from __future__ import annotations

import csv
from functools import partial
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import run_cli
from torch import nn
from torch.nn import functional as F

from mnist_lightning import MLP, MNISTClassifier, MNISTDataModule
from mnist_lightning.checkpoints.files import SafeCheckpointIO, load_checkpoint_file
from mnist_lightning.checkpoints.parts import part_settings
from mnist_lightning.errors import CheckpointError, UserInputError
from mnist_lightning.models.optimization import parameter_groups
from mnist_lightning.models.schedules import Cosine, OneCycle


class SmallCNN(nn.Module):
    """A net that is not the MLP: convolution kernels, a BatchNorm2d's scale and shift, a Linear head."""

    def __init__(self, width: int = 4, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                                      nn.MaxPool2d(4))
        self.head = nn.Linear(width * 7 * 7, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


def adam(lr: float) -> partial:
    """Adam at `lr`: what `--model.optimizer.init_args.lr` gives under the CLI."""
    return partial(torch.optim.Adam, lr=lr)


def test_tutorial_net_is_784_50_10_with_relu_between_and_none_on_logits():
    net = MLP()
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 50), (50, 10)]
    assert isinstance(net.layers[-1], nn.Linear)  # logits come straight from the last Linear
    assert sum(isinstance(m, nn.ReLU) for m in net.modules()) == 1
    assert isinstance(MNISTClassifier().net, MLP) and str(MNISTClassifier().net) == str(net)  # the default net


def test_output_shape_and_logits_can_be_negative():
    model = MNISTClassifier(net=MLP([32, 16]))
    logits = model(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert (logits < 0).any()  # no ReLU (or other clamp) on the logits


def test_options_build_the_documented_layers():
    net = MLP([64, 32], dropout=0.3, input_dropout=0.1, batch_norm=True)
    kinds = [type(m).__name__ for m in net.layers]
    assert kinds == ["Flatten", "Dropout", "Linear", "BatchNorm1d", "ReLU", "Dropout",
                     "Linear", "BatchNorm1d", "ReLU", "Dropout", "Linear"]


def test_cli_part_configs_survive_a_checkpoint_and_rebuild_the_net(trained_run):
    """Under the CLI the parts are stored as class path + init args, so the checkpoint alone rebuilds
    them: the net with its weights, and the optimizer with its settings."""
    checkpoint = torch.load(trained_run.last, weights_only=True)
    saved = checkpoint["hyper_parameters"]
    assert saved["net"] == {"class_path": "mnist_lightning.models.MLP", "init_args": {
        "hidden_sizes": [50], "num_classes": 10, "dropout": 0.0, "input_dropout": 0.0, "batch_norm": False}}
    assert saved["optimizer"]["class_path"] == "torch.optim.Adam" and saved["optimizer"]["init_args"]["lr"] == 0.001
    assert saved["lr_scheduler"] is None
    loaded = MNISTClassifier.load_from_checkpoint(trained_run.last, weights_only=True)
    assert isinstance(loaded.net, MLP) and str(loaded.net) == str(MLP([50]))
    assert loaded.state_dict().keys() == checkpoint["state_dict"].keys()
    for name, value in checkpoint["state_dict"].items():
        assert torch.equal(loaded.state_dict()[name], value), name
    optimizer = loaded.configure_optimizers()
    assert type(optimizer) is torch.optim.Adam and optimizer.defaults["lr"] == 0.001
    assert {k: loaded.hparams[k] for k in ("net", "optimizer", "lr_scheduler")} == {
        k: saved[k] for k in ("net", "optimizer", "lr_scheduler")}


def test_a_model_loaded_from_a_cli_checkpoint_saves_a_checkpoint_that_loads_weights_only(trained_run, tmp_path):
    """Fine-tuning or re-saving a loaded model must write what `load_checkpoint_file` accepts, the
    parts' configs included (so the new checkpoint rebuilds the net too)."""
    loaded = MNISTClassifier.load_from_checkpoint(trained_run.last, weights_only=True)
    trainer = _trainer(tmp_path, max_epochs=0)
    trainer.strategy.connect(loaded)
    trainer.save_checkpoint(tmp_path / "again.ckpt")
    again = torch.load(tmp_path / "again.ckpt", weights_only=True)["hyper_parameters"]
    saved = torch.load(trained_run.last, weights_only=True)["hyper_parameters"]
    assert {k: again[k] for k in ("net", "optimizer", "lr_scheduler")} == {
        k: saved[k] for k in ("net", "optimizer", "lr_scheduler")}


@pytest.mark.parametrize(
    ("build", "match"),
    [(lambda: MNISTClassifier(optimizer=adam(-1e-3)).configure_optimizers(),
      r"model.optimizer \(torch.optim.Adam\) refused its arguments: Invalid learning rate"),
     (lambda: MNISTClassifier(optimizer=adam(0.0)).configure_optimizers(), r"model.optimizer.init_args.lr must be > 0"),
     (lambda: MNISTClassifier(optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=-1.0)).configure_optimizers(),
      r"model.optimizer \(torch.optim.AdamW\) refused its arguments: .*weight_decay"),
     (lambda: MNISTClassifier(lr_scheduler=partial(torch.optim.lr_scheduler.StepLR)).configure_optimizers(),
      r"model.lr_scheduler \(torch.optim.lr_scheduler.StepLR\) refused its arguments: .*step_size"),
     (lambda: MLP([]), "hidden_sizes"), (lambda: MLP([50, 0]), "hidden_sizes"), (lambda: MLP([-5]), "hidden_sizes"),
     (lambda: OneCycle(warmup=1.0), "model.lr_scheduler.init_args.warmup")],
)
def test_invalid_hyperparameters_are_rejected_naming_the_field(build, match):
    """A bad value is the user's setting: one UserInputError naming it (an optimizer or schedule that
    refuses its arguments as torch builds it included), not torch's bare ValueError."""
    with pytest.raises(UserInputError, match=match):
        build()


@pytest.mark.parametrize(("option", "value"), [
    ("--model.net.init_args.dropout", "1.0"), ("--model.net.init_args.input_dropout", "-0.1"),
    ("--model.init_args.label_smoothing", "1.0"), ("--model.init_args.lr_scheduler_interval", "batch"),
    ("--model.init_args.net.init_args.num_classes", "1")])
def test_values_outside_their_type_are_refused_by_the_cli_naming_the_setting(option, value, tmp_path):
    """Ranges the parameter types declare (UnitShare, AtLeastTwo, Literal) are checked by the parser, once."""
    result = run_cli("fit", option, value, "--print_config", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert option.removeprefix("--").split(".")[-1] in result.stderr, result.stderr[-2000:]


def _trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    defaults = dict(default_root_dir=tmp_path, accelerator="cpu", logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, plugins=[SafeCheckpointIO()])
    return pl.Trainer(**{**defaults, **kwargs})


def test_fit_logs_the_documented_metrics_and_learns(shared_tiny_data, tmp_path):
    pl.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=100)
    model = MNISTClassifier(optimizer=adam(3e-3))
    trainer = _trainer(tmp_path, max_epochs=3)
    trainer.fit(model, dm)
    metrics = trainer.callback_metrics
    for name in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert name in metrics, name
    assert metrics["val/acc"] > 0.9  # the fake digits are easy
    assert metrics["val/acc_best"] >= metrics["val/acc"]
    trainer.test(model, dm)
    assert 0.9 < trainer.callback_metrics["test/acc"] <= 1.0


def test_overfitting_a_few_batches_reaches_full_training_accuracy(shared_tiny_data, tmp_path):
    pl.seed_everything(0)
    dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=100)
    # Full accuracy comes within 3 epochs of these 2 batches; 10 leave a wide margin.
    trainer = _trainer(tmp_path, max_epochs=10, overfit_batches=2, check_val_every_n_epoch=10)
    trainer.fit(MNISTClassifier(optimizer=adam(1e-2)), dm)
    assert trainer.callback_metrics["train/acc"] == 1.0


def test_loss_smooths_the_labels_in_training_only():
    """Label smoothing regularises training; validation and test losses stay plain cross-entropy, so
    they compare across runs with any smoothing."""
    model = MNISTClassifier(label_smoothing=0.2)
    logits, targets = torch.randn(8, 10), torch.randint(0, 10, (8,))
    plain = F.cross_entropy(logits, targets)
    assert torch.equal(model.loss(logits, targets), plain)
    assert torch.equal(model.loss(logits, targets, training=True),
                       F.cross_entropy(logits, targets, label_smoothing=0.2))
    assert not torch.equal(model.loss(logits, targets, training=True), plain)
    batch = (torch.rand(8, 1, 28, 28), targets)
    with torch.no_grad():
        assert torch.equal(model.model_step(batch)[0], F.cross_entropy(model(batch[0]), targets))
        assert torch.equal(model.model_step(batch, training=True)[0],
                           F.cross_entropy(model(batch[0]), targets, label_smoothing=0.2))


def test_part_settings_flattens_the_parts_as_documented():
    """Keys as on the command line, so a resume refusal or the HPARAMS row names the exact setting."""
    hparams = {
        "net": {"class_path": "my_nets.SmallCNN", "init_args": {
            "width": 16, "num_classes": 10, "act": {"class_path": "torch.nn.ReLU", "init_args": {}}}},
        "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "betas": (0.9, 0.99)}},
        "lr_scheduler": None,
        "label_smoothing": 0.1,
        "extra": {"a": 1, "b": {"c": [2]}},
        "_class_path": "mnist_lightning.models.MNISTClassifier",
        "_instantiator": "lightning.cli.instantiate_module",
    }
    assert part_settings(hparams) == {
        "net": "my_nets.SmallCNN", "net.init_args.width": 16, "net.init_args.num_classes": 10,
        "net.init_args.act": "torch.nn.ReLU",
        "optimizer": "torch.optim.SGD", "optimizer.init_args.lr": 0.05, "optimizer.init_args.betas": [0.9, 0.99],
        "lr_scheduler": None, "label_smoothing": 0.1, "extra.a": 1, "extra.b.c": [2],
    }


@pytest.fixture(scope="module")
def python_checkpoint(tmp_path_factory: pytest.TempPathFactory, shared_tiny_data: Path) -> tuple[Path, dict]:
    """A checkpoint of a model built in Python with objects for every part, and its weights."""
    tmp_path = tmp_path_factory.mktemp("python_checkpoint")
    model = MNISTClassifier(net=MLP([40, 20]), optimizer=partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.01),
                            lr_scheduler=OneCycle(), label_smoothing=0.1)
    return _save_checkpoint(tmp_path, model, shared_tiny_data), {k: v.clone() for k, v in model.state_dict().items()}


def _save_checkpoint(tmp_path: Path, model: MNISTClassifier, data_dir: Path) -> Path:
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=100)
    trainer = _trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, dm)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_round_trip_restores_hyperparameters_and_weights(python_checkpoint):
    """Objects passed in Python are not stored (they could not be loaded safely): passed again to
    `load_from_checkpoint`, they get the checkpoint's weights; the plain settings come back by themselves."""
    path, weights = python_checkpoint
    saved = torch.load(path, weights_only=True)["hyper_parameters"]
    assert not {"net", "optimizer", "lr_scheduler"} & set(saved)
    loaded = MNISTClassifier.load_from_checkpoint(path, net=MLP([40, 20]), weights_only=True)
    assert loaded.hparams.label_smoothing == 0.1
    assert loaded.state_dict().keys() == weights.keys()
    for name, value in weights.items():
        assert torch.equal(loaded.state_dict()[name], value), name


def test_checkpoint_of_another_architecture_is_refused_with_nothing_loaded(trained_run):
    """The message names the checkpoint's net settings and every weight that does not fit."""
    checkpoint = load_checkpoint_file(trained_run.last)  # the CLI's default net: MLP [50]
    model = MNISTClassifier(net=MLP([40]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        model.on_load_checkpoint(checkpoint)
    message = str(info.value)
    assert ("the checkpoint's net (model.net='mnist_lightning.models.MLP', "
            "model.net.init_args.hidden_sizes=[50]") in message
    assert "does not match this model's net (mnist_lightning.models.MLP)" in message
    assert "net.layers.1.weight: checkpoint (50, 784) vs model (40, 784)" in message
    assert "net.layers.3.weight: checkpoint (10, 50) vs model (10, 40)" in message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(CheckpointError, match=r"missing net.features.0.weight.*unexpected net.layers.1.weight"):
        MNISTClassifier(net=SmallCNN()).on_load_checkpoint(checkpoint)  # another kind of net: keys named
    with pytest.raises(CheckpointError, match="does not match"):
        MNISTClassifier.load_from_checkpoint(trained_run.last, net=MLP([40]), weights_only=True)


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


def test_truncated_checkpoint_is_named_and_the_previous_good_one_survives(trained_run, tmp_path):
    path = trained_run.last
    good = path.read_bytes()
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(good[: len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint_file(broken)
    assert str(broken) in str(info.value)
    assert load_checkpoint_file(path)["state_dict"]  # the good one is untouched
    assert path.read_bytes() == good


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
    # The temporary file (`last.ckpt.<pid>.tmp`, whatever its name) is gone too: the folder holds only the old file.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_checkpoint_payload_is_plain_data(python_checkpoint, trained_run):
    """What the project writes loads with weights_only=True (no pickled objects needed), whether the
    parts were objects passed in Python or configs given on the command line."""
    for path in (python_checkpoint[0], trained_run.last):
        assert torch.load(path, weights_only=True)["state_dict"]  # no pickled object needed to read it
    # The CLI's always-on RunState callback keeps the RNG state, for an exact resume.
    assert isinstance(torch.load(trained_run.last, weights_only=True)["rng_state"]["torch"], torch.Tensor)


def _group_of(optimizer: torch.optim.Optimizer) -> dict[int, dict]:
    groups = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert id(p) not in groups, "a parameter in two groups"
            groups[id(p)] = group
    return groups


@pytest.mark.parametrize("net", [lambda: MLP([32], batch_norm=True), lambda: SmallCNN()], ids=["mlp_bn", "cnn_bn2d"])
@pytest.mark.parametrize("optimizer", [partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
                                       partial(torch.optim.SGD, lr=0.1, weight_decay=0.05)], ids=["adamw", "sgd"])
def test_weight_decay_applies_to_weight_matrices_only(net, optimizer):
    """For any net and optimizer: the optimizer's weight decay reaches the weight matrices and kernels
    (ndim >= 2), and biases and normalisation scales (ndim < 2) get none."""
    model = MNISTClassifier(net=net(), optimizer=optimizer)
    groups = _group_of(model.configure_optimizers())
    assert len(groups) == len(list(model.parameters()))  # every parameter, once
    for name, p in model.named_parameters():
        assert groups[id(p)]["weight_decay"] == (0.05 if p.ndim >= 2 else 0.0), name
    assert {p.ndim for p in model.parameters()} == {1, 2} | ({4} if isinstance(model.net, SmallCNN) else set())
    # The matrices' group leaves weight_decay unset, so the optimizer's own value (or default) applies.
    assert [set(g) - {"params"} for g in parameter_groups(model, model.optimizer_factory)] == [set(), {"weight_decay"}]
    tutorial = MNISTClassifier().configure_optimizers()  # Adam's default: no decay at all, so one group
    assert len(tutorial.param_groups) == 1 and tutorial.param_groups[0]["weight_decay"] == 0


def test_validation_loss_is_the_mean_over_images_not_over_batches(shared_tiny_data, tmp_path):
    dm = MNISTDataModule(data_dir=str(shared_tiny_data), verify=False, val_size=100, eval_batch_size=64)  # 64 + 36
    model = MNISTClassifier()
    metrics = _trainer(tmp_path).validate(model, dm, verbose=False)[0]
    x, y = dm.val_set.__getitems__(list(range(100)))
    with torch.no_grad():
        expected = torch.nn.functional.cross_entropy(model(x), y)
    assert metrics["validate/loss"] == pytest.approx(float(expected), rel=1e-5)  # validate logs under validate/


# ------------------------------------------------------------------ schedules
def _lrs(schedule, steps: int, lr: float = 0.2) -> tuple[list[float], float, torch.optim.lr_scheduler.LRScheduler]:
    """The learning rate each of `steps` optimizer steps used, the rate after them, and the scheduler."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=lr)
    scheduler = schedule(optimizer, steps)
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used, optimizer.param_groups[0]["lr"], scheduler


def test_one_cycle_peaks_at_the_optimizers_lr_after_the_warmup_and_spans_the_steps_given():
    used, _, scheduler = _lrs(OneCycle(warmup=0.25), 40)
    assert max(used) == pytest.approx(0.2)  # the optimizer's lr is the peak
    assert used.index(max(used)) == 9  # the warm-up's last step: 25% of 40 steps (torch counts from 0)
    assert used[0] == pytest.approx(0.2 / 25)
    assert used[-1] == pytest.approx(0.2 / 25 / 1e4)  # the 40th step is the schedule's last
    with pytest.raises(ValueError, match="Tried to step 41 times"):
        scheduler.step()  # and there is no 41st


def test_a_one_cycle_run_torch_cannot_build_is_one_line_naming_the_warmup():
    """OneCycleLR divides by zero when the warm-up is exactly one step (0.25 of 4 steps): a user error naming the
    setting, not a ZeroDivisionError from inside torch."""
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(2))], lr=0.2)
    with pytest.raises(UserInputError, match=r"warmup 0\.25 of this run's 4 optimizer steps.*init_args\.warmup"):
        OneCycle(warmup=0.25)(optimizer, 4)
    assert _lrs(OneCycle(warmup=0.3), 4)[0][0] == pytest.approx(0.2 / 25)  # one step more or less warms up fine


def test_cosine_ends_at_eta_min_after_the_steps_given():
    used, after, _ = _lrs(Cosine(eta_min=1e-4), 20)
    assert used[0] == pytest.approx(0.2) and used[10] == pytest.approx((0.2 + 1e-4) / 2)
    assert after == pytest.approx(1e-4) and min(used) > 1e-4 and used == sorted(used, reverse=True)


# ------------------------------------------------------------------ every Trainer flag works with the idiomatic class
def _fit_idiomatic(data_dir: Path, tmp_path: Path, model: MNISTClassifier | None = None,
                   **trainer_kwargs) -> pl.Trainer:
    pl.seed_everything(3)
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=100, batch_size=32)  # 16 batches an epoch
    trainer = _trainer(tmp_path, **{"max_epochs": 2, **trainer_kwargs})
    trainer.fit(model or MNISTClassifier(optimizer=adam(3e-3)), dm)
    return trainer


def test_gradient_clipping_bounds_every_update(shared_tiny_data, tmp_path):
    norms = []

    class GradNorm(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # the gradients that were applied
            grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
            norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    _fit_idiomatic(shared_tiny_data, tmp_path, MNISTClassifier(optimizer=adam(0.5)), gradient_clip_val=0.01,
                   callbacks=[GradNorm()])
    assert norms and max(norms) <= 0.01 + 1e-6  # Lightning clipped before every step


def test_gradient_accumulation_halves_the_optimizer_steps(shared_tiny_data, tmp_path):
    """Also: a RunSchedule spans the run's optimizer steps (`estimated_stepping_batches`), not its batches."""
    model = MNISTClassifier(optimizer=adam(3e-3), lr_scheduler=OneCycle())
    trainer = _fit_idiomatic(shared_tiny_data, tmp_path, model, accumulate_grad_batches=2)
    assert trainer.global_step == 2 * 16 // 2
    config = trainer.lr_scheduler_configs[0]
    assert config.interval == "step" and config.scheduler.total_steps == trainer.estimated_stepping_batches == 16
    assert config.scheduler.last_epoch == 16  # stepped once per optimizer step: the schedule ended with the run


def test_validation_inside_an_epoch(shared_tiny_data, tmp_path):
    runs = []

    class CountValidations(pl.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                runs.append(trainer.global_step)

    _fit_idiomatic(shared_tiny_data, tmp_path, val_check_interval=4, callbacks=[CountValidations()])
    assert runs == [4, 8, 12, 16, 20, 24, 28, 32]


def test_learning_rate_monitor_logs_a_per_batch_schedule_every_step(shared_tiny_data, tmp_path):
    from pytorch_lightning.callbacks import LearningRateMonitor
    from pytorch_lightning.loggers import CSVLogger

    model = MNISTClassifier(optimizer=adam(3e-3), lr_scheduler=OneCycle())
    _fit_idiomatic(shared_tiny_data, tmp_path, model, logger=CSVLogger(tmp_path), log_every_n_steps=1,
                   callbacks=[LearningRateMonitor(logging_interval="step")])
    with open(next(tmp_path.rglob("metrics.csv"))) as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr-Adam"]) for r in rows if r.get("lr-Adam")]
    assert len(lrs) == 32  # one per optimizer step: the scheduler steps per batch ("interval": "step")
    assert max(lrs) == pytest.approx(3e-3, rel=0.05) and lrs[0] < lrs[10] and lrs[-1] < lrs[16]


def test_max_steps_stops_at_exactly_that_step(shared_tiny_data, tmp_path):
    assert _fit_idiomatic(shared_tiny_data, tmp_path, max_steps=7).global_step == 7


def test_bf16_mixed_precision_trains_on_cpu(shared_tiny_data, tmp_path):
    trainer = _fit_idiomatic(shared_tiny_data, tmp_path, precision="bf16-mixed")
    assert trainer.precision == "bf16-mixed" and trainer.callback_metrics["val/acc"] > 0.5


@pytest.mark.parametrize(("interval", "trainer_kwargs", "halvings"), [
    ("epoch", {"max_epochs": 3}, 3),  # 48 optimizer steps, 3 epochs
    ("step", {"max_epochs": 1, "limit_train_batches": 6, "accumulate_grad_batches": 2}, 3),  # 6 batches, 3 steps
])
def test_a_torch_scheduler_is_stepped_per_epoch_or_per_optimizer_step_as_configured(
        interval, trainer_kwargs, halvings, shared_tiny_data, tmp_path):
    """Any torch scheduler, by `lr_scheduler` and `lr_scheduler_interval`, stepped by the module's own
    configure_optimizers: once per epoch, or once per optimizer step (not per batch)."""
    model = MNISTClassifier(optimizer=adam(1e-2), lr_scheduler_interval=interval,
                            lr_scheduler=partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))
    trainer = _fit_idiomatic(shared_tiny_data, tmp_path, model, **trainer_kwargs)
    assert trainer.lr_scheduler_configs[0].interval == interval
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5**halvings)
