"""`predict`'s output: the predictions table, printed and optionally written as CSV.

    python -m mnist_lightning predict --ckpt_path CKPT                       # the test set
    python -m mnist_lightning predict --ckpt_path CKPT --data.predict_path my_digits/ --predictions_csv out.csv

Your own images are prepared like MNIST's by `mnist_lightning.data.images`.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BasePredictionWriter

from mnist_lightning.atomic import write_atomically
from mnist_lightning.data.images import console_name, display_name
from mnist_lightning.errors import UserInputError
from mnist_lightning.outputs import refuse_run_file

CSV_HEADER = ("file", "prediction", "probability")


class PredictionTable(BasePredictionWriter):
    """Prints (and optionally writes as CSV) what `predict` found, once all images are predicted.

    Args:
        csv_path: also write the rows to this CSV file (its folder is created). It is written
            whole or not at all (temporary file, then rename), UTF-8, names as `display_name` shows them.
            A previous CSV there is replaced; a checkpoint or a run's record is refused at once
            (mnist_lightning/outputs.py).
        ckpt_path: the checkpoint that predict reads, which the CSV must not replace either.
    """

    def __init__(self, csv_path: str | None = None, ckpt_path: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        if csv_path:
            path = Path(csv_path)
            suggestion = path.with_name("predictions.csv" if path.name != "predictions.csv" else "predictions-1.csv")
            refuse_run_file(path, "--predictions_csv", suggestion, ckpt_path)
        self.csv_path = csv_path
        self.rows: list[tuple[str, str, float]] = []  # (file or index, class name, probability), kept for callers

    def write_on_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, predictions: Sequence[Any],
                           batch_indices: Sequence[Any]) -> None:
        probs = torch.cat([p.detach().float().cpu() for p in predictions]) if predictions else torch.empty(0, 0)
        # Lightning gives the dataset indices per dataloader, then per batch; the datamodule has one predict loader.
        indices = [int(i) for batch in batch_indices[0] for i in batch] if len(batch_indices) == 1 else []
        if len(indices) != len(probs):  # not a DataLoader, so Lightning could not track them: in order
            indices = list(range(len(probs)))
        indices, probs = self._gather(trainer, indices, probs)
        if not trainer.is_global_zero:
            return
        dataset = self._dataset(trainer)
        files: list[Path] | None = getattr(dataset, "files", None)
        classes = getattr(trainer.datamodule, "classes", None) if trainer.datamodule is not None else None
        confidence, predicted = probs.max(dim=1) if len(probs) else (torch.empty(0), torch.empty(0, dtype=torch.long))
        self.rows = []
        for i, p, k in zip(indices, confidence.tolist(), predicted.tolist(), strict=True):
            name = display_name(files[i]) if files is not None else str(i)
            self.rows.append((name, str(classes[k]) if classes is not None and k < len(classes) else str(k), p))
        self._print_table("file" if files is not None else "test index")
        if getattr(dataset, "summary", None):
            print(f"predicted {dataset.summary}", file=sys.stderr)
        for file, reason in getattr(dataset, "errors", []):
            print(f"skipped {console_name(file)}: {reason}", file=sys.stderr)
        if self.csv_path:
            self._write_csv(Path(self.csv_path))

    @staticmethod
    def _gather(trainer: pl.Trainer, indices: list[int], probs: torch.Tensor) -> tuple[list[int], torch.Tensor]:
        """Under DDP every rank predicted a share: collect them all, in dataset order."""
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            shares: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(shares, (indices, probs))
            by_index = {i: row for share_indices, share_probs in shares
                        for i, row in zip(share_indices, share_probs, strict=True)}
            indices = sorted(by_index)
            probs = torch.stack([by_index[i] for i in indices]) if indices else probs
        return indices, probs

    @staticmethod
    def _dataset(trainer: pl.Trainer) -> Any:
        loaders = trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        return getattr(loader, "dataset", None)

    def _print_table(self, key: str) -> None:
        names = [console_name(name) for name, _, _ in self.rows]  # one row per file, whatever its name holds
        width = max([len(key)] + [len(name) for name in names])
        label_width = max([len("prediction")] + [len(label) for _, label, _ in self.rows])
        lines = [f"{key:<{width}}  {'prediction':<{label_width}}  probability"]
        lines += [f"{name:<{width}}  {label:<{label_width}}  {p:.4f}" for name, (_, label, p) in zip(names, self.rows,
                                                                                                     strict=True)]
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()

    def csv_bytes(self) -> bytes:
        """The CSV file's content (UTF-8): built whole in memory, so a failing row never leaves half a file."""
        text = io.StringIO(newline="")
        writer = csv.writer(text)
        writer.writerow(CSV_HEADER)
        writer.writerows((name, label, f"{p:.6f}") for name, label, p in self.rows)
        return text.getvalue().encode("utf-8", "backslashreplace")

    def _write_csv(self, path: Path) -> None:
        if path.is_dir():
            raise UserInputError(f"--predictions_csv {console_name(path)} is a folder: give a file name, "
                                 f"e.g. {console_name(path / 'predictions.csv')}.")
        data = self.csv_bytes()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserInputError(f"could not write --predictions_csv {console_name(path)}: "
                                 f"{err.strerror or err}") from None
        write_atomically(path, lambda f: f.write(data), what="--predictions_csv")
        print(f"Wrote {len(self.rows)} predictions to {console_name(path)}")
