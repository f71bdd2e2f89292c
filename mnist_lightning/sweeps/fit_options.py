"""The fit command line of every trial and seed: parsed as `fit` would parse it, and checked before any run.

A sweep parses its run configs and fit options, then each key and bound of its search space, then runs one
batch (Lightning's fast_dev_run, which writes nothing) at the search space's first point: a typo in a key, a
value the CLI refuses, missing data or a metric that no trial logs stops the sweep in seconds, before a trial
trains or a study exists.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from jsonargparse import Namespace
from optuna.distributions import BaseDistribution, CategoricalDistribution

from mnist_lightning.callbacks.resume import TrainingDiverged
from mnist_lightning.cli.cli import MNISTLightningCLI
from mnist_lightning.cli.console import quiet_console
from mnist_lightning.errors import DataFileError, UserInputError
from mnist_lightning.sweeps.sweep_file import Sweep

# Each trial runs in this process on one device: a DDP launcher would start this command again per device.
ONE_DEVICE = ("--trainer.devices", "1")


@contextmanager
def in_process() -> Iterator[None]:
    """The CLI's quiet console, without LightningCLI's warning that `args=` differs from sys.argv (on purpose here)."""
    with quiet_console(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        yield


class _Parsed(Exception):
    """Carries the parsed config out of a CLI that must not build anything."""


class _ParseOnlyCLI(MNISTLightningCLI):
    """The project's CLI that parses and checks a `fit` command line, then stops: no run folder, no model."""

    def init_parser(self, **kwargs: Any) -> Any:
        return super().init_parser(exit_on_error=False, **kwargs)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        super().parse_arguments(parser, args)
        raise _Parsed(self.config)


def _cli_reason(err: Exception) -> str:
    """The informative line of a jsonargparse error (its messages list every Union alternative)."""
    lines = [line.strip().lstrip("- ") for line in str(err).splitlines() if line.strip()]
    noise = ("Parser key", "Does not validate", "Subtypes:", "Errors:", "Expected a <class 'NoneType'>",
             "Given value type", "Problem with given class_path")
    useful = [line for line in lines if not line.startswith(noise)]
    return (useful or lines or [type(err).__name__])[0]


def parse_fit(args: Sequence[str]) -> Namespace:
    """Parse `fit ARGS` as the CLI would (default.yaml first) and return the `fit` section; errors raise."""
    try:
        with in_process():
            _ParseOnlyCLI(args=["fit", *args])
    except _Parsed as parsed:
        return parsed.args[0].fit
    except Exception as err:  # jsonargparse's ArgumentError (and any check of the project's CLI)
        if isinstance(err, UserInputError):
            raise
        raise UserInputError(_cli_reason(err)) from None
    raise AssertionError("unreachable: _ParseOnlyCLI always raises")


def cli_value(value: Any) -> str:
    """A value as the command line reads it (YAML): strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def config_args(configs: Sequence[Path | str]) -> list[str]:
    """`--config FILE` for each run config, as `fit` takes them."""
    return [a for c in configs for a in ("--config", str(c))]


def _values_to_check(distribution: BaseDistribution) -> list[Any]:
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    return [distribution.low, distribution.high]  # type: ignore[attr-defined]


def check_search_space(space: dict[str, BaseDistribution], base_args: Sequence[str]) -> None:
    """Refuse, before any trial, a key the CLI does not know or a value it rejects (e.g. model.hiden_sizes)."""
    values = {key: _values_to_check(d) for key, d in space.items()}
    for i in range(max(len(v) for v in values.values())):
        args = [a for key, vs in values.items() for a in (f"--{key}", cli_value(vs[min(i, len(vs) - 1)]))]
        try:
            parse_fit([*base_args, *args])
            continue
        except UserInputError:
            pass
        for key, vs in values.items():  # find the culprit, to name it
            value = vs[min(i, len(vs) - 1)]
            try:
                parse_fit([*base_args, f"--{key}", cli_value(value)])
            except UserInputError as err:
                raise UserInputError(f"search_space {key} (value {cli_value(value)}): fit refuses it ({err}). Keys are "
                                     "fit's own options, as in `python -m mnist_lightning fit --help`.") from None


class _MetricsAtValidation(pl.Callback):
    """The names logged by the end of the first validation, where PruneHopelessTrials reads the sweep's metric;
    where no validation runs, those logged by the end of the fit, whose last values a trial would report."""

    def __init__(self) -> None:
        self.names: list[str] | None = None
        self.validated = False

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.names is None:
            self.names, self.validated = sorted(trainer.callback_metrics), True

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.names is None:
            self.names = sorted(trainer.callback_metrics)


@contextmanager
def _lightning_quiet() -> Iterator[None]:
    """No Lightning info lines or warnings: for the check below, whose fast_dev_run notices are not the user's news."""
    loggers = [logging.getLogger(name) for name in ("pytorch_lightning", "lightning_fabric")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def metric_not_logged(metric: str, logged: Sequence[str], validated: bool = True) -> UserInputError:
    if not validated:
        return UserInputError(f"the sweep's metric {metric!r} is not logged: the trials run no validation (e.g. "
                              f"--data.val_size 0; logged: {', '.join(logged) or 'none'}). A sweep compares trials "
                              "on validation: keep a validation split, or fix `metric` in the sweep file.")
    return UserInputError(f"the sweep's metric {metric!r} is not logged (logged: {', '.join(logged) or 'none'}); "
                          "fix `metric` in the sweep file.")


def check_one_batch(sweep: Sweep, base_args: Sequence[str]) -> None:
    """Before the first trial: one training and one validation batch (Lightning's fast_dev_run, which writes no run
    folder, log or checkpoint) at the search space's first point, so that data the data module cannot find or
    verify, or a `metric` that no trial logs, stops the sweep in seconds, before a trial trains.

    A point where training diverges says nothing about the metric, nor about the other points: the trials judge it.
    """
    first = [a for key, d in sweep.search_space.items() for a in (f"--{key}", cli_value(_values_to_check(d)[0]))]
    seen = _MetricsAtValidation()
    args = ["fit", *base_args, *first, *ONE_DEVICE, "--trainer.fast_dev_run", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    try:
        with in_process(), _lightning_quiet():
            MNISTLightningCLI(args=args, callbacks=[seen])
    except TrainingDiverged:
        return
    except DataFileError as err:  # files missing and not downloadable: the data module lists them, line by line
        lines = str(err).splitlines()
        if len(lines) == 1:
            raise
        raise DataFileError(f"{lines[0]} Point --data.data_dir at a folder with the official files (`fit` with "
                            "this --data.data_dir lists them).") from None
    if seen.names is not None and sweep.metric not in seen.names:
        raise metric_not_logged(sweep.metric, seen.names, seen.validated)
