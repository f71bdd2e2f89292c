"""Ablation: what each part of the default config costs per epoch, from Lightning's bare loop up.

    python benchmarks/ablation.py --data-dir ../shared/data/mnist [--repeats 3] [--epochs 3]

Each step adds one part to the one before, built in-process with `pl.Trainer` and the project's
classes; every step runs in a fresh process, the steps alternating within each repeat:
  bare  benchmarks/bare_reference.py: the plain-PyTorch loop, plain Adam (the reference)
  a     Trainer with everything off (no logger, checkpointing, progress bar, model summary or
        validation) on a minimal LightningModule around the same MLP: no metrics, no logging,
        plain Adam; the project's in-memory MNISTDataModule
  a2    the same with the fused Adam that MNISTClassifier uses
  b0    MNISTClassifier as it was before issue 22 (a subclass, for this measurement only): torchmetrics'
        MeanMetric + MulticlassAccuracy updated every step and `self.log` of the step loss on every
        step, everything still off (the logging work is paid even without a logger)
  b1    the same without the per-step `self.log`: what the two metric objects cost
  b     MNISTClassifier as it is: one TrainingMeans update per step, the step loss logged only on the
        steps whose value reaches a logger (none here; one in 50 from step e on)
  c     + validation each epoch (and Lightning's 2-batch sanity check before fit)
  d     + progress bar (TQDMProgressBar, refresh 50) and the model summary
  e     + TensorBoardLogger (log_every_n_steps 50)
  f     + ModelCheckpoint(val/acc, top 1) + ResumeCheckpoint (last.ckpt every epoch) + SafeCheckpointIO
  g     + LearningRateMonitor(logging_interval="epoch")
  h     + ValidationFigures(num_images 32): the default config, built by hand
  cli   `python -m mnist_lightning fit` with mnist_lightning/default.yaml, as a check that h is the default
  cli-fast  the same with --config configs/fast.yaml (FastMNISTClassifier), for comparison
All with torch threads 1, seed 42, batch 64, Adam 1e-3, in-memory data. Per-epoch time is the
median of epochs 2..N (benchmarks/epoch_timer.py says what an epoch holds). Prints, per step, the
median s/epoch, the median over repeats of its ratio to the bare loop of the same repeat, and the
increment over the step before, in wall-clock and in CPU time (the steadier one on a shared
machine: all runs use one thread). Run one step alone with `--step c` (prints JSON).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
STEPS = {
    "bare": "bare PyTorch loop, plain Adam (reference)",
    "a": "Lightning loop, everything off, minimal module, plain Adam",
    "a2": "+ fused Adam (MNISTClassifier's optimizer)",
    "b0": "MNISTClassifier before issue 22: 2 metric objects + self.log every step",
    "b1": "the same without the per-step self.log",
    "b": "MNISTClassifier now: 1 TrainingMeans update, step loss logged when written",
    "c": "+ validation each epoch",
    "d": "+ progress bar (refresh 50), model summary",
    "e": "+ TensorBoard logger",
    "f": "+ ModelCheckpoint(val/acc) + ResumeCheckpoint",
    "g": "+ LearningRateMonitor(epoch)",
    "h": "+ ValidationFigures = the default config",
    "cli": "`python -m mnist_lightning fit` (default config)",
    "cli-fast": "the same, --config configs/fast.yaml",
}
LIGHTNING_STEPS = ("a", "a2", "b0", "b1", "b", "c", "d", "e", "f", "g", "h")


def run_step(step: str, data_dir: Path, epochs: int, workdir: Path) -> dict:
    """Train one step of the ablation in this process; returns its epoch times."""
    from functools import partial
    from typing import Any

    import pytorch_lightning as pl
    import torch
    import torch.nn.functional as F  # noqa: N812
    from epoch_timer import EpochTimer
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from pytorch_lightning.loggers import TensorBoardLogger
    from torchmetrics import MeanMetric
    from torchmetrics.classification import MulticlassAccuracy

    from mnist_lightning.__main__ import skip_failing_nvml_check
    from mnist_lightning.callbacks.figures import ValidationFigures
    from mnist_lightning.callbacks.resume import ResumeCheckpoint
    from mnist_lightning.checkpoints.files import SafeCheckpointIO
    from mnist_lightning.data.datamodule import MNISTDataModule
    from mnist_lightning.models.classifier import MNISTClassifier
    from mnist_lightning.models.mlp import MLP

    skip_failing_nvml_check()  # as `python -m mnist_lightning` does
    torch.set_num_threads(1)
    pl.seed_everything(42, verbose=False)

    class MinimalModule(pl.LightningModule):
        """The same MLP, cross-entropy and Adam; nothing else."""

        def __init__(self, fused: bool) -> None:
            super().__init__()
            self.net = MLP([50], 10)
            self.fused = fused

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3, fused=self.fused or None)

    class BeforeIssue22(MNISTClassifier):
        """MNISTClassifier's training step as it was: two metric objects, and `self.log` every step if `log_steps`."""

        def __init__(self, log_steps: bool, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.log_steps = log_steps
            self.old_loss = MeanMetric()
            self.old_acc = MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            loss, preds, y = self.model_step(batch, training=True)
            self.old_loss.update(loss)
            self.old_acc.update(preds, y)
            if self.log_steps:
                self.log("train/loss_step", loss.detach().mean(), on_step=True, on_epoch=False)
            return loss

        def on_train_epoch_end(self) -> None:
            self.log("train/loss", self.old_loss.compute(), batch_size=1)
            self.log("train/acc", self.old_acc.compute(), prog_bar=True, batch_size=1)
            self.old_loss.reset()
            self.old_acc.reset()

    level = LIGHTNING_STEPS.index(step)
    on = {s: level >= LIGHTNING_STEPS.index(s) for s in LIGHTNING_STEPS}
    adam = partial(torch.optim.Adam, lr=1e-3, fused=True)  # the default config's parts: 784-50-10 MLP, fused Adam
    if not on["b0"]:
        model = MinimalModule(fused=on["a2"])
    elif not on["b"]:
        model = BeforeIssue22(log_steps=not on["b1"], net=MLP([50]), optimizer=adam)
    else:
        model = MNISTClassifier(net=MLP([50]), optimizer=adam)
    timer = EpochTimer(str(workdir / "epochs.json"), exit_marker=False)
    callbacks: list = [timer]
    plugins: list = []
    if on["d"]:
        callbacks.append(TQDMProgressBar(refresh_rate=50))
    if on["f"]:
        callbacks += [ModelCheckpoint(monitor="val/acc", mode="max", save_top_k=1,
                                      filename="epoch{epoch:02d}-val_acc{val/acc:.4f}", auto_insert_metric_name=False),
                      ResumeCheckpoint()]
        plugins.append(SafeCheckpointIO())
    if on["g"]:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    if on["h"]:
        callbacks.append(ValidationFigures(num_images=32))
    logger = (TensorBoardLogger(save_dir=str(workdir / "lightning_logs"), name="", default_hp_metric=False)
              if on["e"] else False)
    trainer = pl.Trainer(
        accelerator="auto", devices="auto", max_epochs=epochs, log_every_n_steps=50, default_root_dir=str(workdir),
        logger=logger, enable_checkpointing=on["f"], enable_progress_bar=on["d"], enable_model_summary=on["d"],
        limit_val_batches=1.0 if on["c"] else 0, num_sanity_val_steps=2 if on["c"] else 0,
        callbacks=callbacks, plugins=plugins or None,
    )
    trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(data_dir), batch_size=64))
    return {"epoch_times": timer.epoch_times, "epoch_cpu_times": timer.epoch_cpu_times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step", choices=LIGHTNING_STEPS, help="run this one step in this process and print JSON")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if args.step:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_step(args.step, data_dir, args.epochs, Path(tmp))))
        return

    from speed import run_measured, steady

    py, names = sys.executable, list(STEPS)
    started = datetime.datetime.now().astimezone()
    times: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            order = names[repeat % len(names):] + names[: repeat % len(names)]
            for name in order:
                cwd = Path(tmp) / f"{name}{repeat}"
                cwd.mkdir()
                if name in ("cli", "cli-fast"):
                    timing = cwd / "epochs.json"
                    fast = ["--config", str(ROOT / "configs" / "fast.yaml")] if name == "cli-fast" else []
                    run_measured([py, "-m", "mnist_lightning", "fit", *fast, "--data.data_dir", str(data_dir),
                                  "--trainer.max_epochs", str(args.epochs),
                                  "--trainer.callbacks+=epoch_timer.EpochTimer",
                                  "--trainer.callbacks.path", str(timing)], cwd)
                    data = json.loads(timing.read_text())
                else:
                    script = (["bare_reference.py", "--threads", "1"] if name == "bare"
                              else ["ablation.py", "--step", name])
                    cmd = [py, str(BENCH / script[0]), *script[1:], "--data-dir", str(data_dir),
                           "--epochs", str(args.epochs)]
                    data = json.loads(run_measured(cmd, cwd)[-1].strip().splitlines()[-1])
                times[name]["wall"].append(steady(data["epoch_times"]))
                times[name]["cpu"].append(steady(data["epoch_cpu_times"]))
            print(f"repeat {repeat + 1}/{args.repeats}, s/epoch wall/CPU: " + " ".join(
                f"{name} {times[name]['wall'][-1]:.3f}/{times[name]['cpu'][-1]:.3f}" for name in names),
                file=sys.stderr, flush=True)

    def med(name: str, kind: str) -> float:
        return statistics.median(times[name][kind])

    def ratio(name: str, kind: str) -> list[float]:
        """Per repeat, this step over the bare loop of the same repeat."""
        return [t / b for t, b in zip(times[name][kind], times["bare"][kind], strict=True)]

    print(f"\n{started:%Y-%m-%d %H:%M %Z}: medians of {args.repeats} alternating runs, {args.epochs} epochs each "
          f"(s/epoch: median of epochs 2..{args.epochs}); torch threads 1, batch 64, seed 42. Ratios: per repeat "
          "to the bare loop of the same repeat, median (range); increments: from the step above.\n")
    print("| step | s/epoch wall (CPU) | / bare, wall | / bare, CPU | increment, wall | increment, CPU "
          "| increment, CPU ms/epoch |")
    print("|---|---|---|---|---|---|---|")
    previous = None
    for name in names:
        cells = [f"{med(name, 'wall'):.3f} ({med(name, 'cpu'):.3f})"]
        for kind in ("wall", "cpu"):
            r = ratio(name, kind)
            cells.append(f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})")
        base = {"cli": "h", "cli-fast": "cli"}.get(name, previous)
        suffix = f" (vs {base})" if name.startswith("cli") else ""
        for kind in ("wall", "cpu"):
            cells.append("-" if base is None else
                         f"{statistics.median(ratio(name, kind)) - statistics.median(ratio(base, kind)):+.2f}{suffix}")
        cells.append("-" if base is None else f"{1000 * (med(name, 'cpu') - med(base, 'cpu')):+.0f}{suffix}")
        print(f"| {name}: {STEPS[name]} | " + " | ".join(cells) + " |")
        previous = name


if __name__ == "__main__":
    main()
