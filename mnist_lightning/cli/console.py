"""What a command prints: Lightning's noise left out, and after `fit` where its checkpoints are and how to test one."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from jsonargparse import Namespace

from mnist_lightning.callbacks.resume import ResumeCheckpoint, best_checkpoint
from mnist_lightning.cli.failures import DISK_FULL
from mnist_lightning.cli.refit import no_validation_reason
from mnist_lightning.commands import mnist_command
from mnist_lightning.errors import quiet_warnings

# Lightning messages that say nothing a user of this project needs (each checked):
QUIET = (
    r".*`weights_only` was not set",  # Lightning's own loads; ours are weights_only=True (SafeCheckpointIO)
    r".*isinstance\(treespec, LeafSpec\)",  # torch's pytree deprecation, raised inside Lightning
    r".*The dirpath has changed from",  # predict: no checkpoints are written there
    r".*Checkpoint directory .* exists and is not empty",  # a resume continues in its own folder on purpose
    r".*Precision bf16-mixed is not supported by the model summary",  # only the summary's size estimate (MB)
    r".*Total length of `list` across ranks is zero",  # data.val_size 0: no validation, said in a line of ours
)
# Where the data is and how it is read are this machine's: the printed test command spells them out.
MACHINE_DATA_SETTINGS = ("data_dir", "verify", "pipeline", "eval_batch_size", "num_workers")


class _DropAdverts(logging.Filter):
    """Lightning's "Tip: ... try installing litlogger/litmodels" lines: advertising, not information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


@contextmanager
def quiet_console() -> Iterator[None]:
    """Silence the Lightning messages in QUIET and its cloud tips for one command, not process-wide; and
    the traceback of TensorBoard's writer thread on a full disk, which the command itself reports in one
    line (the writer raises the same error again in the main thread)."""
    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    adverts = _DropAdverts()
    lightning_info.addFilter(adverts)
    previous_hook = threading.excepthook

    def quiet_on_full_disk(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL):
            previous_hook(args)

    threading.excepthook = quiet_on_full_disk
    try:
        with quiet_warnings(*QUIET):
            yield
    finally:
        threading.excepthook = previous_hook
        lightning_info.removeFilter(adverts)


def report_fit(trainer: Any, datamodule: Any, checkpoint: dict[str, Any] | None, test_command: Any) -> None:
    """After `fit`: why nothing trained, if nothing did; the best and last checkpoints; the test command."""
    say_why_nothing_trained(trainer, checkpoint)
    callback = best_checkpoint(trainer)
    if callback is not None:
        score = callback.best_model_score
        score_text = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
        print(f"Best checkpoint{score_text}: {callback.best_model_path}")
    last = ResumeCheckpoint.path(trainer)
    no_validation = no_validation_reason(datamodule, trainer.limit_val_batches)
    if callback is None and no_validation and last.exists():  # the refit protocol: the last epoch is the model
        print(f"No validation ran ({no_validation}): the model is the last checkpoint, {last}")
    elif last.exists():
        print(f"Last checkpoint: {last}")
    tested = callback.best_model_path if callback is not None else str(last) if last.exists() else None
    if tested:
        print(f"Test it with: {test_command(tested)}")


def print_results(results: list[dict[str, float]], stage: str) -> None:
    """An evaluation's results as Lightning's table has them, one column per dataloader, less the `step` that
    callbacks/evaluation_step.py logs: the x-axis the results are logged at, not a metric."""
    names = sorted({name for per_loader in results for name in per_loader} - {"step"})
    if not names:
        return
    header = [f"{stage.capitalize()} metric", *(f"DataLoader {i}" for i in range(len(results)))]
    rows = [[name, *(f"{float(r[name]):.6f}" if name in r else "" for r in results)] for name in names]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1))
    print(rule)
    for row in [header, None, *rows]:
        cells = [] if row is None else [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        print("   ".join(cells).rstrip() if cells else rule)
    print(rule)


def say_why_nothing_trained(trainer: Any, checkpoint: dict[str, Any] | None) -> None:
    """A fit that made no optimizer step ends normally (exit 0: each case is a legal request, e.g.
    limit_train_batches 0 to validate only), but says so in one line instead of nothing."""
    started_at = int(checkpoint.get("global_step") or 0) if checkpoint is not None else 0
    if trainer.global_step != started_at:
        return
    if trainer.max_epochs == 0:
        why = "--trainer.max_epochs is 0"
    elif trainer.limit_train_batches == 0 or trainer.num_training_batches == 0:
        why = "there are no training batches (--trainer.limit_train_batches 0, or no training images)"
    elif checkpoint is not None and trainer.fit_loop.done:
        why = (f"the checkpoint has already trained {trainer.current_epoch} epochs of max_epochs "
               f"{trainer.max_epochs}; pass a larger --trainer.max_epochs to train on")
    else:
        why = "the trainer's limits (max_steps, max_time) allowed no step"
    print(f"nothing trained: {why}.", file=sys.stderr)


def test_command(ckpt_path: str, config: Namespace, defaults: Namespace) -> str:
    """The `test` command for a checkpoint of this run, with the data settings that differ from the defaults.

    The checkpoint carries the model and the data's input and split settings; where the data is and how
    it is read are this machine's, so they are spelt out.
    """
    args = ["test", "--ckpt_path", ckpt_path]
    for key in MACHINE_DATA_SETTINGS:
        value = config.data.get(key)
        if value != defaults.data.get(key):
            args += [f"--data.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    if config.trainer.get("accelerator") not in (None, "auto", defaults.trainer.get("accelerator")):
        args += ["--trainer.accelerator", str(config.trainer.accelerator)]
    return mnist_command(*args)
