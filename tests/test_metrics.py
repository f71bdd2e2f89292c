"""TrainingMeans: the training epoch's loss and accuracy, the values torchmetrics' own metrics give."""

from __future__ import annotations

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lightning.models.metrics import TrainingMeans


def batches(seed: int, count: int, size: int = 64) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = size if i < count - 1 else 13  # a short last batch, as an epoch has
        logits = torch.randn(n, 10, generator=generator)
        targets = torch.randint(0, 10, (n,), generator=generator)
        loss = torch.nn.functional.cross_entropy(logits, targets) * (1 + i / 7)
        out.append((loss, logits.argmax(1), targets))
    return out


def test_one_update_per_step_gives_the_values_of_meanmetric_and_micro_accuracy_bit_for_bit():
    means = TrainingMeans()
    mean, accuracy = MeanMetric(), MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
    for loss, preds, targets in batches(0, 300):
        means.update(loss, preds, targets)
        mean.update(loss)
        accuracy.update(preds, targets)
    got_loss, got_acc = means.compute()
    assert torch.equal(got_loss, mean.compute()) and torch.equal(got_acc, accuracy.compute())
    means.reset()
    assert means.seen == 0 and means.batches == 0


def test_several_batches_in_one_update_count_as_several_batches():
    """The fast class updates once per 50 steps, with a vector of their losses."""
    data = batches(1, 50)
    together = TrainingMeans()
    together.update(torch.stack([b[0] for b in data]), torch.cat([b[1] for b in data]), torch.cat([b[2] for b in data]))
    mean = MeanMetric()
    mean.update(torch.stack([b[0] for b in data]))
    accuracy = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
    for _, preds, targets in data:
        accuracy.update(preds, targets)
    loss, acc = together.compute()
    assert torch.equal(loss, mean.compute()) and torch.equal(acc, accuracy.compute())
    assert together.batches == 50
