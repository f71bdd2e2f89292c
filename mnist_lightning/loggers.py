"""A CSV logger that adds to a run's `metrics.csv` when it reopens the run, instead of deleting it.

Lightning's `CSVLogger` deletes the `metrics.csv` of a version folder that is not empty when it opens it
(its writer warns "Previous log files in this directory will be deleted"), so a resumed CSV run lost its
earlier epochs, and a `test` added to the run would have left only the test row. The CLI uses this class
in its place whenever a run's folder is reopened (`runs.keep_csv_rows`); as a logger of your own it is
`--trainer.logger mnist_lightning.loggers.AppendingCSVLogger` (a name of its own, so that the short
`--trainer.logger CSVLogger` still names Lightning's).
"""

from __future__ import annotations

import csv
import os
import warnings
from typing import Any

from lightning_fabric.utilities.cloud_io import get_filesystem
from pytorch_lightning.loggers import CSVLogger as LightningCSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment

KEPT_SUFFIX = ".kept"  # metrics.csv.kept: the earlier rows, on disk until they are written back


class AppendingCSVLogger(LightningCSVLogger):
    """Lightning's CSVLogger, except that a version folder's `metrics.csv` keeps its rows when it is reopened
    (a resume, or an evaluation added to the run): the earlier rows first, then the new ones.

    Before Lightning's writer opens the folder, the file is moved aside (so the writer finds none to
    delete, and a crash or a full disk in between loses nothing: the next open reads the moved file); its
    rows are handed to the writer's `log_metrics` as they were read and saved at once, then the moved file goes.
    """

    def __init__(self, save_dir: str | os.PathLike, name: str | None = "lightning_logs",
                 version: int | str | None = None,
                 prefix: str = "", flush_logs_every_n_steps: int = 100) -> None:
        super().__init__(save_dir, name=name, version=version, prefix=prefix,
                         flush_logs_every_n_steps=flush_logs_every_n_steps)
        self._opened = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._opened:
            return super().experiment
        fs = get_filesystem(self.log_dir)
        metrics_file = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        kept = metrics_file + KEPT_SUFFIX
        if fs.isfile(metrics_file) and not fs.isfile(kept):  # a kept file is a crashed reopen's: the whole file
            fs.mv(metrics_file, kept)
        with warnings.catch_warnings():  # nothing is deleted here: the warning would say otherwise
            warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
            writer = super().experiment
        if fs.isfile(kept):
            with fs.open(kept, "r", newline="") as file:
                for row in csv.DictReader(file):
                    step = row.pop("step", None) or ""
                    values = {k: v for k, v in row.items() if k is not None}  # not a hand-edit's extra fields
                    writer.log_metrics(values, int(step) if step.isdigit() else step)
            writer.save()
            fs.rm_file(kept)
        self._opened = True
        return writer
