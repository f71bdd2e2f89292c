"""TensorBoard beyond curves: the event files of a real run hold the scalars, the learning rate, the
validation figures (one per epoch, none from the sanity check) and the hparams entry with real metrics."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import TINY_ARGS, run_cli
from PIL import Image
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from mnist_lightning.callbacks.drawing import (
    Layout,
    confusion_figure,
    confusion_layout,
    grid_layout,
    image_grid,
    render,
)
from mnist_lightning.callbacks.figures import ValidationFigures
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.data.idx import DATASETS
from mnist_lightning.models.classifier import MNISTClassifier

EPOCHS = 2
LR = 0.002
ALL = {"scalars": 0, "images": 0, "tensors": 0, "histograms": 0, "compressedHistograms": 0, "audio": 0}


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance=ALL)
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, shared_tiny_data: Path) -> Path:
    """A 2-epoch CLI run with the default config (mnist_lightning/default.yaml, which carries the figure and LR
    callbacks). Not the shared `trained_run`: its learning rate is not the default, so the logged rate and the
    hparams entry must come from the run's setting, not from a default (torch's Adam default is also 1e-3)."""
    workdir = tmp_path_factory.mktemp("figures")
    result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", str(EPOCHS),
                     "--model.optimizer.init_args.lr", str(LR), "--torch_threads", "1", cwd=workdir)
    assert result.returncode == 0, result.stderr
    return workdir / "lightning_logs" / "version_0"


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_scalars_and_learning_rate(cli_run: Path) -> None:
    acc = _events(cli_run)
    tags = set(acc.Tags()["scalars"])
    for tag in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
        values = [e.value for e in acc.Scalars(tag)]
        assert len(values) == EPOCHS, (tag, values)
        assert all(math.isfinite(v) for v in values), (tag, values)
        if tag.endswith("acc") or tag.endswith("acc_best"):
            assert all(0.0 <= v <= 1.0 for v in values), (tag, values)
        else:
            assert all(v > 0 for v in values), (tag, values)
    val_acc = [e.value for e in acc.Scalars("val/acc")]
    assert acc.Scalars("val/acc_best")[-1].value == pytest.approx(max(val_acc))
    # Lightning's LearningRateMonitor (the default config), once per epoch: a constant schedule, one curve
    # (Adam without weight decay gets a single parameter group: MNISTClassifier.parameter_groups).
    assert "lr-Adam" in tags and not any(t.startswith("lr-Adam/") for t in tags), sorted(tags)
    assert [e.value for e in acc.Scalars("lr-Adam")] == pytest.approx([LR] * EPOCHS)


def test_validation_figures_once_per_epoch_with_sane_sizes(cli_run: Path) -> None:
    acc = _events(cli_run)
    images = set(acc.Tags()["images"])
    assert {"val/predictions", "val/confusion_matrix"} <= images, sorted(images)
    val_steps = sorted({e.step for e in acc.Scalars("val/acc")})
    for tag in ("val/predictions", "val/confusion_matrix"):
        events = acc.Images(tag)
        # One per validation epoch, none for the sanity check (which runs before step 0's first batch).
        assert len(events) == EPOCHS, (tag, [e.step for e in events])
        assert all(e.step > 0 for e in events)
        # Logged at the trainer's global step, next to the epoch's val/acc.
        assert all(abs(e.step - s) <= 1 for e, s in zip(events, val_steps, strict=True)), (tag, val_steps)
        for event in events:
            decoded = Image.open(io.BytesIO(event.encoded_image_string))
            assert decoded.size == (event.width, event.height)
            assert 200 <= event.width <= 2000 and 200 <= event.height <= 2000, (tag, decoded.size)
            assert len(np.unique(np.asarray(decoded.convert("L")))) > 2, f"{tag} is a blank image"
    matrix = acc.Images("val/confusion_matrix")[-1]
    assert 0.8 <= matrix.width / matrix.height <= 1.25
    # The mistakes grid is logged exactly in the epochs that had mistakes (val/acc below 1).
    epochs_with_mistakes = [e.step for e in acc.Scalars("val/acc") if e.value < 1.0]
    logged = [e.step for e in acc.Images("val/confident_mistakes")] if "val/confident_mistakes" in images else []
    assert len(logged) == len(epochs_with_mistakes), (logged, epochs_with_mistakes)
    assert all(abs(a - b) <= 1 for a, b in zip(logged, epochs_with_mistakes, strict=True))


def test_hparams_entry_has_the_real_final_metric(cli_run: Path) -> None:
    acc = _events(cli_run)
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content), sorted(content)
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "hp/val_acc_best" in [m.name.tag for m in experiment.metric_infos]
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert session.hparams["model.optimizer.init_args.lr"].number_value == pytest.approx(LR)
    scalars = acc.Tags()["scalars"]
    assert "hp_metric" not in scalars, "the -1 placeholder is back"
    best = acc.Scalars("hp/val_acc_best")[-1].value
    assert 0.0 < best <= 1.0
    assert best == pytest.approx(max(e.value for e in acc.Scalars("val/acc")))


def _red_pixels(image: Image.Image) -> int:
    rgb = np.asarray(image.convert("RGB")).astype(int)
    return int(((rgb[..., 0] > 180) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)).sum())


def test_grid_marks_exactly_the_mistakes() -> None:
    images = torch.rand(6, 1, 28, 28)
    classes = [str(k) for k in range(10)]
    right = image_grid(images, [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6], classes, columns=3)
    one_wrong = image_grid(images, [1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 0], classes, columns=3)
    two_wrong = image_grid(images, [1, 2, 3, 4, 5, 6], [7, 2, 3, 4, 5, 0], classes, columns=3)
    assert right.size == one_wrong.size and right.width > right.height  # 3 columns, 2 rows
    assert _red_pixels(right) == 0
    assert 0 < _red_pixels(one_wrong) < _red_pixels(two_wrong)
    assert render(two_wrong).shape == (two_wrong.height, two_wrong.width, 3)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _check_legible(layout: Layout, figure: Image.Image) -> None:
    """Every label inside the image, none overlapping another or a tile, and no ink outside the layout."""
    width, height = layout.size
    assert figure.size == layout.size
    boxes = [t.box for t in layout.texts]
    for text, box in zip(layout.texts, boxes, strict=True):
        assert 0 <= box[0] < box[2] <= width and 0 <= box[1] < box[3] <= height, (text.text, box, layout.size)
    for i, a in enumerate(boxes):
        for j in range(i + 1, len(boxes)):
            assert not _overlap(a, boxes[j]), (layout.texts[i].text, layout.texts[j].text)
        tiles = [r for r in layout.regions if _overlap(a, r)]
        # Only a matrix count sits on its own cell, centred in it.
        assert not tiles or (len(tiles) == 1 and layout.texts[i].anchor == "mm" and a[0] >= tiles[0][0]
                             and a[2] <= tiles[0][2] and a[1] >= tiles[0][1] and a[3] <= tiles[0][3]), layout.texts[i]
    blanked = figure.convert("RGB")
    for box in boxes + layout.regions:
        blanked.paste((255, 255, 255), box)
    assert np.asarray(blanked).min() == 255, "something is drawn outside the layout's boxes"


def _some_of_every_class(n: int = 32) -> tuple[list[int], list[int]]:
    """Predictions and targets pairing every class, so the longest names meet as neighbours."""
    return [i % 10 for i in range(n)], [(7 * i + 3) % 10 for i in range(n)]


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize(("n", "columns", "probs"), [(32, 8, False), (32, 8, True), (1, 8, True), (5, 1, False)])
def test_grid_labels_fit_the_class_names_and_never_overlap(dataset: str, n: int, columns: int, probs: bool) -> None:
    classes = DATASETS[dataset].classes
    preds, targets = _some_of_every_class(n)
    confidence = [0.999 - 0.01 * i for i in range(n)] if probs else None
    layout, tiles = grid_layout(n, 28, 28, preds, targets, classes, confidence, columns=columns)
    assert len(tiles) == n
    shown = {t.text for t in layout.texts}
    assert {classes[k] for k in preds + targets} <= shown  # the full names, not cut
    _check_legible(layout, image_grid(torch.rand(n, 1, 28, 28), preds, targets, classes, confidence, columns=columns))


@pytest.mark.parametrize("dataset", list(DATASETS))
@pytest.mark.parametrize("largest", [9, 5000, 123456])
def test_confusion_matrix_labels_and_counts_fit_and_never_overlap(dataset: str, largest: int) -> None:
    classes = DATASETS[dataset].classes
    matrix = torch.randint(0, 30, (10, 10), generator=torch.Generator().manual_seed(0))
    matrix.fill_diagonal_(largest)
    matrix[3, 4] = 0  # an empty cell shows no count
    layout, _, _ = confusion_layout(matrix, classes)
    assert {t.text for t in layout.texts} >= set(classes) | {str(largest)}
    _check_legible(layout, confusion_figure(matrix, classes))


def test_figure_text_is_large_enough_to_read() -> None:
    layout, _ = grid_layout(1, 28, 28, [7], [7], DATASETS["mnist"].classes)
    digit = next(t for t in layout.texts if t.text == "7")
    assert digit.box[3] - digit.box[1] >= 10  # pixels of a digit's height: the old 11-px font drew ~8


def _fit(tmp_path: Path, data: Path, figures: ValidationFigures, epochs: int, logger: bool = True) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=[figures],
                         logger=TensorBoardLogger(tmp_path, name="", version=0) if logger else False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    pl.seed_everything(0)
    trainer.fit(MNISTClassifier(), MNISTDataModule(data_dir=str(data), verify=False, val_size=100))
    return trainer


def test_confusion_matrix_counts_every_validation_image_once(tmp_path: Path, shared_tiny_data: Path,
                                                             one_thread) -> None:
    figures = ValidationFigures(num_images=8, every_n_epochs=2)
    trainer = _fit(tmp_path, shared_tiny_data, figures, epochs=3)
    matrix = figures.last_confusion
    assert matrix is not None and matrix.shape == (10, 10)
    assert int(matrix.sum()) == 100  # val_size, not doubled by the sanity check or the grids
    assert float(matrix.trace()) / 100 == pytest.approx(float(trainer.callback_metrics["val/acc"]))
    assert figures.seconds > 0
    # every_n_epochs=2 over 3 epochs: figures after the second epoch only.
    acc = _events(tmp_path / "version_0")
    assert len(acc.Images("val/predictions")) == 1
    grid = Image.open(io.BytesIO(acc.Images("val/predictions")[0].encoded_image_string))
    assert grid.width > grid.height  # 8 images in one row


def test_without_tensorboard_it_warns_and_training_goes_on(tmp_path: Path, shared_tiny_data: Path,
                                                           one_thread) -> None:
    figures = ValidationFigures()
    with pytest.warns(UserWarning, match="no TensorBoardLogger"):
        trainer = _fit(tmp_path, shared_tiny_data, figures, epochs=1, logger=False)
    assert trainer.state.finished
    assert figures.last_confusion is not None and int(figures.last_confusion.sum()) == 100


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        ValidationFigures(every_n_epochs=0)
