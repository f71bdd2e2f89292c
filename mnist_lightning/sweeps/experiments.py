"""Hyperparameter sweeps (Optuna) and seed repeats; every trial and every seed is an ordinary `fit` run.

    python -m mnist_lightning sweep --config configs/sweeps/tutorial.yaml --n_trials 3 --data.data_dir D
    python -m mnist_lightning sweep --config configs/sweeps/tutorial.yaml --summary
    python -m mnist_lightning seeds --config configs/mlp_best.yaml --seeds 0 1 2 --data.data_dir D

A sweep keeps its Optuna study in `lightning_logs/sweeps/<name>/study.db`, or where --storage says (a
journal file on a shared filesystem, a PostgreSQL server: mnist_lightning/sweeps/storage.py): the same
command started again continues it, and several started together, on one machine or many, share it. The study
records what its trials share (run configs and fit options, by value, and the metric) and refuses to continue
with other ones; one batch (fast_dev_run) checks the data and the metric before the first trial.
docs/experiments.md describes the sweep file, storages, resuming, parallel workers, pruning and best.yaml.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import re
import shlex
import signal
import socket
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytorch_lightning as pl
import sqlalchemy.exc
import yaml
from jsonargparse import Namespace
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState
from pytorch_lightning.cli import SaveConfigCallback

from mnist_lightning.callbacks.resume import ResumeCheckpoint, TrainingDiverged, TrainingInterrupted
from mnist_lightning.checkpoints.parts import part_settings, without_init_args
from mnist_lightning.cli import refit
from mnist_lightning.cli.cli import MNISTLightningCLI
from mnist_lightning.cli.console import quiet_console
from mnist_lightning.commands import mnist_command
from mnist_lightning.errors import DataFileError, UserInputError, first_line
from mnist_lightning.sweeps.storage import JournalHeartbeat, StorageSpec, heartbeat_of, open_storage, parse_storage

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SAMPLERS: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
    "tpe": optuna.samplers.TPESampler,
    "random": optuna.samplers.RandomSampler,
}
PRUNERS: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
    "none": optuna.pruners.NopPruner,
    "median": optuna.pruners.MedianPruner,
    "percentile": optuna.pruners.PercentilePruner,
    "threshold": optuna.pruners.ThresholdPruner,
    "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
    "hyperband": optuna.pruners.HyperbandPruner,
}
SPEC_FIELDS = {"float": {"low", "high", "log", "step"}, "int": {"low", "high", "log", "step"}, "categorical": {"choices"}}
# Each trial runs in this process on one device: a DDP launcher would start this command again per device.
ONE_DEVICE = ("--trainer.devices", "1")
# A study's name is also its folder, <logs>/sweeps/<name>: one folder name, never a path.
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
STUDY_NAME_RULE = "letters, digits, '.', '_' and '-', starting with a letter or digit, at most 100 characters"
# Fit settings that say where a trial runs and what it shows, not what it trains: the workers of one study may
# differ in them (each machine its own data folder, device, threads, logs and console). Every other fit setting
# is part of what a study's trials share (`trial_settings`).
WORKER_SETTINGS = ("config", "ckpt_path", "torch_threads", "predictions_csv", "allow_untrained",
                   "data.data_dir", "data.num_workers", "data.eval_batch_size", "data.pipeline", "data.predict_path",
                   "trainer.accelerator", "trainer.devices", "trainer.logger", "trainer.default_root_dir",
                   "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps")
TRIALS_SHARE = "trials_share"  # the study's user attribute that holds trial_settings


@contextmanager
def in_process() -> Iterator[None]:
    """The CLI's quiet console, without LightningCLI's warning that `args=` differs from sys.argv (on purpose here)."""
    with quiet_console(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended")
        yield


# ----------------------------------------------------------------------------------------- the sweep file
@dataclass
class Sweep:
    """A parsed, checked sweep file (docs/experiments.md, "The sweep file")."""

    path: Path
    configs: list[Path]
    search_space: dict[str, BaseDistribution]
    metric: str = "val/acc"
    direction: str = "maximize"
    n_trials: int | None = None
    timeout: float | None = None
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe", "seed": 0})
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median", "n_startup_trials": 5, "n_warmup_steps": 1})
    heartbeat: dict[str, int] = field(default_factory=lambda: {"interval": 10, "grace_period": 30})


def _fail(path: Path, message: str) -> UserInputError:
    return UserInputError(f"sweep file {path}: {message}")


def _number(value: Any, where: str, path: Path) -> float:
    """A YAML number; also "1e-4", which YAML 1.1 reads as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, f"{where} must be a number; got {value!r}.")
    return value


def _distribution(key: str, spec: Any, path: Path) -> BaseDistribution:
    """One search_space entry as an Optuna distribution; Optuna checks low/high/step/log itself."""
    kinds = ", ".join(SPEC_FIELDS)
    if not isinstance(spec, dict) or spec.get("type") not in SPEC_FIELDS:
        raise _fail(path, f"search_space {key} needs `type: float|int|categorical` and its fields ({kinds}); got {spec!r}.")
    kind, fields = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    unknown = set(fields) - SPEC_FIELDS[kind]
    if unknown:
        raise _fail(path, f"search_space {key}: unknown field(s) {', '.join(sorted(unknown))} for type {kind} "
                          f"(known: {', '.join(sorted(SPEC_FIELDS[kind]))}).")
    try:
        if kind == "categorical":
            choices = fields.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"choices must be a non-empty list; got {choices!r}")
            # Optuna stores plain values only: a list such as [512, 512] is kept as its JSON text, which
            # is also exactly what the command line accepts.
            return CategoricalDistribution([json.dumps(c) if isinstance(c, list | dict) else c for c in choices])
        if "low" not in fields or "high" not in fields:
            raise ValueError("needs low and high")
        low, high = (_number(fields[k], f"search_space {key}.{k}", path) for k in ("low", "high"))
        step = None if fields.get("step") is None else _number(fields["step"], f"search_space {key}.step", path)
        log = fields.get("log", False)
        if not isinstance(log, bool):
            raise ValueError(f"log must be true or false; got {log!r}")
        if kind == "float":
            return FloatDistribution(low, high, log=log, step=step)
        if any(v != int(v) for v in (low, high, step or 1)):
            raise ValueError("low, high and step of an int must be whole numbers")
        return IntDistribution(int(low), int(high), log=log, step=int(step or 1))
    except ValueError as err:
        raise _fail(path, f"search_space {key}: {err}.") from None


def _choice(value: Any, where: str, known: dict[str, Any], path: Path) -> dict[str, Any]:
    """`sampler`/`pruner`: a name, or a mapping with `type` and the Optuna class's keyword arguments."""
    spec = {"type": "none" if value is None else value} if not isinstance(value, dict) else dict(value)
    if spec.get("type") not in known:
        raise _fail(path, f"{where} type must be one of {', '.join(known)}; got {spec.get('type')!r}.")
    return spec


def load_sweep(path: Path) -> Sweep:
    """Read and check a sweep file; every mistake is one UserInputError that names the field."""
    if not path.is_file():
        raise UserInputError(f"sweep file {path} does not exist (the sweeps that ship are in configs/sweeps/).")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise _fail(path, f"not valid YAML ({first_line(err)}).") from None
    if not isinstance(raw, dict):
        raise _fail(path, "must be a mapping of fields (configs, search_space, ...).")
    known = ("configs", "metric", "direction", "n_trials", "timeout", "sampler", "pruner", "heartbeat", "search_space")
    for name in raw:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" Did you mean {close[0]}?" if close else f" Known fields: {', '.join(known)}."
            raise _fail(path, f"unknown field {name!r}.{hint}")
    sweep = Sweep(path=path, configs=[], search_space={})
    configs = raw.get("configs", [])
    if not isinstance(configs, list) or not all(isinstance(c, str) for c in configs):
        raise _fail(path, f"configs must be a list of run config files; got {configs!r}.")
    for config in configs:
        resolved = path.parent / config  # relative to the sweep file, like an include
        if not resolved.is_file():
            raise _fail(path, f"run config {config} not found (looked for {resolved}; paths are relative to the sweep file).")
        sweep.configs.append(resolved.resolve())
    space = raw.get("search_space")
    if not isinstance(space, dict) or not space:
        raise _fail(path, "search_space must map fit options (e.g. model.lr) to {type: float|int|categorical, ...}.")
    sweep.search_space = {str(key): _distribution(str(key), spec, path) for key, spec in space.items()}
    for name in ("metric", "direction"):
        if name in raw and not isinstance(raw[name], str):
            raise _fail(path, f"{name} must be a string; got {raw[name]!r}.")
    sweep.metric = raw.get("metric", sweep.metric)
    sweep.direction = raw.get("direction", sweep.direction)
    if sweep.direction not in ("maximize", "minimize"):
        raise _fail(path, f"direction must be maximize or minimize; got {sweep.direction!r}.")
    sweep.n_trials = _positive(raw.get("n_trials"), "n_trials", int, path)
    sweep.timeout = _positive(raw.get("timeout"), "timeout", float, path)
    if "sampler" in raw:
        sweep.sampler = _choice(raw["sampler"], "sampler", SAMPLERS, path)
    if "pruner" in raw:
        sweep.pruner = _choice(raw["pruner"], "pruner", PRUNERS, path)
    heartbeat = raw.get("heartbeat", {})
    if not isinstance(heartbeat, dict) or set(heartbeat) - {"interval", "grace_period"}:
        raise _fail(path, f"heartbeat takes interval and grace_period (seconds); got {heartbeat!r}.")
    for name, value in heartbeat.items():
        sweep.heartbeat[name] = _positive(value, f"heartbeat.{name}", int, path)
    return sweep


def _positive(value: Any, where: str, kind: type, path: Path | None = None) -> Any:
    if value is None:
        return None
    ok = not isinstance(value, bool) and isinstance(value, int | float) and value > 0 and (kind is float or value == int(value))
    if not ok:
        what = "a positive whole number" if kind is int else "a positive number"
        raise (_fail(path, f"{where} must be {what}; got {value!r}.") if path else
               UserInputError(f"--{where} must be {what}; got {value!r}."))
    return kind(value)


# ----------------------------------------------------------------------------------------- fit options
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
    """The names logged by the end of the first validation, where PruneHopelessTrials reads the sweep's metric."""

    def __init__(self) -> None:
        self.names: list[str] | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and self.names is None:
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


def _metric_not_logged(metric: str, logged: Sequence[str]) -> UserInputError:
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
        raise _metric_not_logged(sweep.metric, seen.names)


# ----------------------------------------------------------------------------------------- one study, one training
def study_name(given: str | None, sweep: Sweep) -> str:
    """The study's name, `--name` or else the sweep file's: also its folder <logs>/sweeps/<name>, so one safe folder
    name (`a/../../b` would write outside the sweeps folder)."""
    name = sweep.path.stem if given is None else given
    if STUDY_NAME.fullmatch(name):
        return name
    if given is None:
        raise UserInputError(f"the sweep file's name {name!r} cannot name its study (a folder of <logs>/sweeps): pass "
                             f"--name NAME, of {STUDY_NAME_RULE}.")
    raise UserInputError(f"--name {given!r}: a study's name is one folder of <logs>/sweeps, of {STUDY_NAME_RULE}.")


def _cli_key(key: str) -> str:
    """A setting's key as the sweep's search space writes it: the model's own `init_args.` left out."""
    return f"model.{key.removeprefix('model.init_args.')}" if key.startswith("model.init_args.") else key


def trial_settings(config: Namespace, sweep: Sweep) -> dict[str, Any]:
    """What every trial of the study trains with, apart from its sampled parameters: the metric it is judged by and
    the resolved fit settings of the sweep's run configs and fit options (by value, not by file name), keyed as on
    the command line, without the searched keys and WORKER_SETTINGS. As JSON values, the way the study keeps them."""
    searched = {without_init_args(key) for key in sweep.search_space}
    fit = {}
    for key, value in part_settings(config.as_dict()).items():
        key = _cli_key(key)
        if without_init_args(key) in searched or any(key == w or key.startswith(f"{w}.") for w in WORKER_SETTINGS):
            continue
        fit[key] = value
    return json.loads(json.dumps({"metric": sweep.metric, "fit": fit}, default=str))


_UNSET = object()


def _shown(value: Any) -> str:
    return "unset" if value is _UNSET else cli_value(value)


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    found = []
    if stored.get("metric") != current["metric"]:
        found.append(f"metric {stored.get('metric')} in the study, {current['metric']} in the sweep file")
    old, new = stored.get("fit") or {}, current["fit"]
    for key in sorted(set(old) | set(new)):
        before, now = old.get(key, _UNSET), new.get(key, _UNSET)
        if before != now:
            found.append(f"{key} {_shown(before)} in the study, {_shown(now)} now")
    return found


def check_trials_share(study: optuna.Study, settings: dict[str, Any], storage: StorageSpec) -> None:
    """Refuse to add trials trained otherwise than the study's (other run configs, fit options or metric): its
    best trial would then just be the one that trained longest. A new study records `settings` (as a study user
    attribute, in every storage); so does a study recorded before there was this check."""
    stored = study.user_attrs.get(TRIALS_SHARE)
    if stored is None:
        study.set_user_attr(TRIALS_SHARE, settings)
        stored = study.user_attrs[TRIALS_SHARE]  # read back: a worker that recorded at the same moment may have won
    differences = _differences(stored, settings)
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise UserInputError(
            f"the study {study.study_name!r} in {storage.shown} holds trials trained otherwise: {'; '.join(differences[:3])}"
            f"{more}. Its trials would not compare with these: give the study's settings again, or start a new study "
            "with --name NEW_NAME.")


@contextmanager
def _folder_for(folder: Path) -> Iterator[None]:
    """`folder`, created for the block; if the block fails, the folders it created that are still empty go again
    (a refused sweep leaves no empty <logs>/sweeps/<name>)."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for path in created:  # the deepest first
            try:
                path.rmdir()
            except OSError:  # not empty (a study, a run folder) or gone: keep it and everything above
                break
        raise


# ----------------------------------------------------------------------------------------- Optuna pieces
class PruneHopelessTrials(pl.Callback):
    """Reports the sweep's metric to the trial after each validation, and stops the fit when Optuna says prune.

    optuna-integration's callback is written for `lightning.pytorch`; this project's Trainer is
    `pytorch_lightning`, a separate namespace it does not recognise.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial, self.metric = trial, metric
        self.pruned_at: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Known from the start, also if the trial dies; absolute, with its host and the run's saved config,
        # so that any worker, on any machine, can find the run and write best.yaml from the study alone.
        self.trial.set_user_attr("host", socket.gethostname())
        self.trial.set_user_attr("run_dir", os.path.abspath(trainer.log_dir))
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        saved = Path(trainer.log_dir) / saver.config_filename if saver else None
        if saved is not None and saved.is_file():
            self.trial.set_user_attr("config", saved.read_text())

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.metric)
        if value is None:  # check_one_batch has seen it logged: a part that logs it only sometimes
            raise _metric_not_logged(self.metric, sorted(trainer.callback_metrics))
        self.trial.report(float(value), step=trainer.current_epoch)
        if self.trial.should_prune():
            self.pruned_at = trainer.current_epoch
            trainer.should_stop = True


class TrialSeededSampler(optuna.samplers.BaseSampler):
    """A fresh sampler for each trial, seeded with `seed + trial number`.

    One seeded sampler per process would make parallel workers, and a restarted sweep, draw the
    same parameters again; seeding by trial number keeps a sweep reproducible and its workers apart.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int) -> None:
        self._make, self._seed = make, seed
        self._sampler = make(seed)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._sampler = self._make(self._seed + trial.number)
        self._sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self._sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return self._sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        return self._sampler.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self._sampler.reseed_rng()


def _build(spec: dict[str, Any], known: dict[str, Callable[..., Any]], where: str, **extra: Any) -> Any:
    kwargs = {k: v for k, v in spec.items() if k != "type"} | extra
    try:
        return known[spec["type"]](**kwargs)
    except (TypeError, ValueError) as err:
        raise UserInputError(f"sweep file {where} {spec}: {first_line(err)}.") from None


def make_sampler(spec: dict[str, Any]) -> optuna.samplers.BaseSampler:
    seed = spec.get("seed")
    if seed is None:
        return _build(spec, SAMPLERS, "sampler")
    _build(spec, SAMPLERS, "sampler")  # refuse bad arguments now, not at the first trial
    return TrialSeededSampler(lambda s: _build(spec, SAMPLERS, "sampler", seed=s), seed)


def open_study(name: str, spec: StorageSpec, sweep: Sweep, create: bool = True) -> tuple[optuna.Study, BaseStorage]:
    """The sweep's study, created on first use, and its storage; several workers opening it at once is fine."""
    pruner = _build(sweep.pruner, PRUNERS, "pruner")
    sampler = make_sampler(sweep.sampler)
    url = spec.shown
    for attempt in range(3):
        try:
            storage = open_storage(spec, sweep.heartbeat)
            if not create:
                return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner), storage
            study = optuna.create_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner,
                                        direction=sweep.direction, load_if_exists=True)
            break
        except KeyError:
            raise UserInputError(f"no sweep named {name!r} in {url}: run the sweep first (same --name and --storage).") from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == 2:  # (earlier attempts: another worker was creating the same tables)
                raise UserInputError(f"cannot open the sweep's storage {url}: {first_line(err)}") from None
            time.sleep(1 + attempt)
        except sqlalchemy.exc.DatabaseError as err:  # e.g. SQLite's "file is not a database": no retry mends it
            raise UserInputError(f"cannot read the sweep's storage {url} ({first_line(err)}): it is damaged or not an "
                                 "Optuna study. Move it aside to start the study again, or give another --name (or "
                                 "--storage).") from None
    if study.direction.name.lower() != sweep.direction:
        raise UserInputError(f"the stored study {name!r} was made to {study.direction.name.lower()}, the sweep file "
                             f"says {sweep.direction}: keep the direction, or start a new study with --name.")
    return study, storage


# ----------------------------------------------------------------------------------------- running trials
def suggest(trial: optuna.Trial, key: str, distribution: BaseDistribution) -> Any:
    """Ask the trial for a value of one search_space entry."""
    if isinstance(distribution, CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    assert isinstance(distribution, FloatDistribution)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


class _SurplusTrial(Exception):
    """Two workers started a trial at the same moment and the study needed only one more."""


class _SweepStopped(BaseException):
    """Ends the sweep from inside a trial, which it marks failed first: Ctrl+C or SIGTERM (`code`, 128 + the
    signal), or a user's mistake (`error`) that only a trial could find.

    Not an Exception, as SystemExit is not: Optuna's optimize logs every Exception of a trial with its
    traceback (and a KeyboardInterrupt too) before raising it again, and lets this through as it is.
    """

    def __init__(self, code: int = 2, error: UserInputError | None = None) -> None:
        super().__init__(code)
        self.code, self.error = code, error

    def fail(self, trial: optuna.Trial) -> _SweepStopped:
        """Mark the trial failed now (unless another worker already did), instead of after its heartbeat went stale."""
        trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return self


def _ignore_further_interrupts() -> None:
    """After the first Ctrl+C: the trial is being marked failed and the sweep is ending; a second must not break that."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


def _counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials in the storage: what every worker sees."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running


@dataclass
class Objective:
    """One trial: a `fit` with the sampled options; its value is the metric at the last validation."""

    sweep: Sweep
    base_args: list[str]
    n_trials: int | None

    def __call__(self, trial: optuna.Trial) -> float:
        try:
            return self.run(trial)
        except KeyboardInterrupt:  # e.g. while the trial's CLI parses and builds its parts, before the fit's handler
            _ignore_further_interrupts()
            raise _SweepStopped(code=130).fail(trial) from None

    def run(self, trial: optuna.Trial) -> float:
        if self.n_trials is not None:  # the count before this trial's number, which the storage assigned
            before = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                      if t.number < trial.number]
            if len(before) >= self.n_trials:
                trial.set_user_attr("surplus", True)
                raise _SurplusTrial(f"trial {trial.number} not needed: the study already has its {self.n_trials} trials")
        params = {key: suggest(trial, key, d) for key, d in self.sweep.search_space.items()}
        args = ["fit", *self.base_args, *(a for k, v in params.items() for a in (f"--{k}", cli_value(v))), *ONE_DEVICE]
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = PruneHopelessTrials(trial, self.sweep.metric)
        start = time.perf_counter()
        stop = None
        try:
            with in_process():
                cli = MNISTLightningCLI(args=args, callbacks=[pruning], resume_hint=False)  # the sweep says how to go on
        except TrainingDiverged as err:
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned(f"training diverged: {err}") from None
        except TrainingInterrupted as err:  # in the fit: last.ckpt written, the run's resume line printed
            _ignore_further_interrupts()
            stop = _SweepStopped(code=err.code if isinstance(err.code, int) else 130)
        except UserInputError as err:
            stop = _SweepStopped(error=UserInputError(f"trial {trial.number} (marked failed): {err}"))
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if stop is not None:
            raise stop.fail(trial)
        best = next((c.best_model_path for c in cli.trainer.checkpoint_callbacks if getattr(c, "best_model_path", "")), None)
        trial.set_user_attr("best_checkpoint", best and os.path.abspath(best))
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"{self.sweep.metric} at epoch {pruning.pruned_at} was hopeless")
        value = cli.trainer.callback_metrics.get(self.sweep.metric)
        if value is None:
            raise _SweepStopped(error=UserInputError(
                f"trial {trial.number} (marked failed) ran no validation, so it has no {self.sweep.metric}: check the "
                "fit options.")).fail(trial)
        return float(value)


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int | None,
               timeout: float | None, poll_s: float, heartbeat: JournalHeartbeat | None = None) -> None:
    """Run trials until the study holds `n_trials` finished ones (all workers together) or time is up.

    Before each trial the stale trials of killed workers are failed and the finished and running
    trials counted; while the running ones could complete the total, this worker waits for them
    instead of starting more. The heartbeat is RDBStorage's own (Optuna's `fail_stale_trials`), or
    for a journal storage `heartbeat` (sweep_storage.JournalHeartbeat), which also beats while this
    worker's trial runs.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    said, ran = False, False
    run = objective if heartbeat is None else heartbeat.around(objective)
    while deadline is None or time.monotonic() < deadline:
        if heartbeat is None:
            optuna.storages.fail_stale_trials(study)  # RDBStorage's heartbeat; nothing for a storage without one
        else:
            heartbeat.fail_stale(study)
        finished, running = _counts(study)
        if n_trials is not None and finished >= n_trials:
            if not ran:
                print(f"The study already has {finished} finished trials (n_trials {n_trials}): nothing to run. "
                      "A larger --n_trials runs more.", flush=True)
            return
        if n_trials is not None and finished + running >= n_trials:
            if not said:
                print(f"{finished} of {n_trials} trials finished; waiting for the {running} still running (other "
                      "workers, or a killed one's, failed once its heartbeat is stale).", file=sys.stderr, flush=True)
                said = True
            time.sleep(poll_s)
            continue
        try:
            study.optimize(run, n_trials=1, catch=(_SurplusTrial,))
        except (ValueError, AssertionError) as err:
            if not _failed_elsewhere(err):
                raise
            print("another worker failed this worker's trial, whose heartbeat had gone stale (paused, overloaded or "
                  "cut off from the storage for longer than grace_period); its run folder stays, and the sweep goes on.",
                  file=sys.stderr, flush=True)
        ran = True


def _failed_elsewhere(err: BaseException | None) -> bool:
    """Whether Optuna could not record this worker's trial because it was no longer running: its
    "Cannot tell a FAIL trial", which Optuna may wrap in an AssertionError of its own."""
    while err is not None:
        if isinstance(err, ValueError) and str(err).startswith("Cannot tell a"):
            return True
        err = err.__context__
    return False


# ----------------------------------------------------------------------------------------- the summary
def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_metric(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"{trial.value:.4f}"
    if trial.intermediate_values:
        return f"{trial.intermediate_values[max(trial.intermediate_values)]:.4f}"
    return "-"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def trials_table(study: optuna.Study, metric: str) -> str:
    rows = [[str(t.number), t.state.name, _trial_metric(t), _format_value(t.user_attrs.get("seconds", "-")),
             t.user_attrs.get("host", "-"), t.user_attrs.get("run_dir", "-"),
             " ".join(f"{k}={_format_value(v)}" for k, v in t.params.items())]
            for t in study.get_trials(deepcopy=False)]
    return format_table(["#", "state", metric, "seconds", "host", "run folder", "params"], rows)


def importances_table(study: optuna.Study) -> str:
    """Which searched options moved the metric, by Optuna's PED-ANOVA (numpy only: fANOVA and mean decrease
    impurity need scikit-learn). Few trials give a rough answer; the header says over how many."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return "Parameter importances: need at least 2 complete trials."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # with few trials PED-ANOVA warns that its top and all trials coincide
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator(), normalize=False)
    total = sum(importances.values())
    if total == 0:  # Optuna's normalising would show equal shares: say that nothing is known instead
        return f"Parameter importances: the {len(complete)} complete trials do not tell the searched options apart."
    rows = [[key, f"{value / total:.3f}"] for key, value in importances.items()]
    header = f"Parameter importances (PED-ANOVA over {len(complete)} complete trials, summing to 1):"
    return f"{header}\n{format_table(['param', 'importance'], rows)}"


def write_best_config(trial: FrozenTrial, target: Path, sweep_name: str) -> None:
    """The best trial's saved run config, with the logger version null so `fit --config` makes a new run.

    The study holds the config (user attribute `config`), so this works on any worker; a trial recorded
    before it did falls back to the file in its run folder.
    """
    run_dir = Path(trial.user_attrs["run_dir"])
    source = run_dir / "config.yaml"
    text = trial.user_attrs.get("config")
    if text is None and not source.is_file():
        raise UserInputError(f"the best trial's run config {source} is missing (trial {trial.number} ran on "
                             f"{trial.user_attrs.get('worker', '?')}): run --summary where its run folder is.")
    config = yaml.safe_load(text if text is not None else source.read_text())
    loggers = config.get("trainer", {}).get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, dict) and isinstance(logger.get("init_args"), dict):
            logger["init_args"]["version"] = None
    config["ckpt_path"] = None
    header = (f"# The best trial ({trial.number}) of sweep {sweep_name!r}: its run config {source} (on host "
              f"{trial.user_attrs.get('host', '?')}), with the logger\n"
              "# version null, so `fit --config` on this file trains the same run again in a new folder.\n")
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    tmp.write_text(header + yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, target)  # several workers may finish at once: each writes the whole file


def summarize_sweep(study: optuna.Study, sweep_dir: Path, metric: str) -> None:
    """Print the trials, write the best one's config to best.yaml and print how to reproduce it."""
    print(trials_table(study, metric))
    print(f"\n{importances_table(study)}")
    finished, running = _counts(study)
    print(f"\n{finished} finished trial(s), {running} running.")
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print("No trial has completed yet: best.yaml not written.")
        return
    best = study.best_trial
    target = sweep_dir / "best.yaml"
    write_best_config(best, target, sweep_dir.name)
    shown = os.path.relpath(target) if not os.path.relpath(target).startswith("..") else str(target.resolve())
    print(f"Best trial {best.number}: {metric} {best.value:.4f} ({best.user_attrs.get('run_dir')} on "
          f"{best.user_attrs.get('host', '?')}), "
          f"{' '.join(f'{k}={_format_value(v)}' for k, v in best.params.items())}")
    print(f"Its config: {shown}")
    print(f"Reproduce it with: {mnist_command('fit', '--config', shown)}")


def _logs_root(config: Namespace) -> Path:
    logger = config.trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    save_dir = logger.get("init_args", Namespace()).get("save_dir") if isinstance(logger, Namespace) else None
    return Path(save_dir or "lightning_logs")


def _config_args(configs: Sequence[Path | str]) -> list[str]:
    return [a for c in configs for a in ("--config", str(c))]


def sweep_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning sweep", allow_abbrev=False,
        description="Run (or continue) an Optuna sweep; other options are fit options applied to every trial.")
    parser.add_argument("--config", required=True, action="append", type=Path, help="the sweep file")
    parser.add_argument("--n_trials", type=int, help="total finished trials of the study (overrides the file)")
    parser.add_argument("--timeout", type=float, help="start no trial after this many seconds (overrides the file)")
    parser.add_argument("--storage", help="sqlite:///FILE (default <logs>/sweeps/<name>/study.db, one machine), "
                        "journal:FILE (a shared filesystem) or a database URL (postgresql+psycopg://user@host/db)")
    parser.add_argument("--name", help="study name (default: the sweep file's name)")
    parser.add_argument("--summary", action="store_true", help="print the trials and write best.yaml; run no trial")
    args, fit_args = parser.parse_known_args(argv)
    if len(args.config) > 1:
        raise UserInputError("sweep takes one sweep file (--config); list its run configs under `configs:` in it.")
    sweep = load_sweep(args.config[0])
    name = study_name(args.name, sweep)
    n_trials = _positive(args.n_trials, "n_trials", int) or sweep.n_trials
    timeout = _positive(args.timeout, "timeout", float) or sweep.timeout
    if n_trials is None and timeout is None and not args.summary:
        raise UserInputError("the sweep needs an end: set n_trials or timeout in the sweep file, or pass --n_trials N.")
    given = {a.split("=", 1)[0].removeprefix("--") for a in fit_args if a.startswith("--")}
    searched = given & set(sweep.search_space)
    if searched:
        raise UserInputError(f"{', '.join(sorted(searched))} is searched by the sweep: drop it from the command line.")
    base_args = [*_config_args(sweep.configs), *fit_args]
    try:
        config = parse_fit(base_args)
    except UserInputError as err:
        raise UserInputError(f"the sweep's fit options: {err}") from None
    strategy = str(config.trainer.get("strategy") or "auto")
    if "ddp" in strategy or str(config.trainer.get("num_nodes")) not in ("1", "None"):
        raise UserInputError(f"a sweep runs each trial in one process on one device; drop trainer.strategy {strategy} "
                             "/ num_nodes (run several workers instead: docs/experiments.md).")
    sweep_dir = _logs_root(config) / "sweeps" / name
    storage = parse_storage(args.storage, sweep_dir / "study.db")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: in Optuna since 2.9
        if args.summary:
            if not storage.exists():
                raise UserInputError(f"no sweep {name!r} here: {storage.shown} does not exist (run the sweep first, "
                                     "or pass its --storage).")
            with _folder_for(sweep_dir):  # for best.yaml, also where no trial ran
                summarize_sweep(open_study(name, storage, sweep, create=False)[0], sweep_dir, sweep.metric)
            return
        check_search_space(sweep.search_space, base_args)
        check_one_batch(sweep, base_args)  # the data and the metric, before any folder or study exists
        with _folder_for(sweep_dir):
            study, opened = open_study(name, storage, sweep)
            check_trials_share(study, trial_settings(config, sweep), storage)
            heartbeat = heartbeat_of(storage, opened, sweep.heartbeat)
            print(f"Sweep {name!r}: study {storage.shown}, {sweep.direction} {sweep.metric}, "
                  f"{n_trials if n_trials is not None else 'unlimited'} trials, timeout {timeout or 'none'}.", flush=True)
            try:
                run_trials(study, Objective(sweep, base_args, n_trials), n_trials, timeout,
                           poll_s=min(sweep.heartbeat["interval"], 5), heartbeat=heartbeat)
            except _SweepStopped as stop:
                if stop.error is not None:
                    raise stop.error from None
                print("interrupted: the running trial is marked failed; the same command continues the sweep.",
                      file=sys.stderr)
                raise SystemExit(stop.code) from None
            except KeyboardInterrupt:  # between trials (counting them, waiting for other workers' trials)
                _ignore_further_interrupts()
                print("interrupted between trials; the same command continues the sweep.", file=sys.stderr)
                raise SystemExit(130) from None
        print()
        summarize_sweep(study, sweep_dir, sweep.metric)


# ----------------------------------------------------------------------------------------- seeds
@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (n-1; None for one value), min and max."""

    mean: float
    std: float | None
    low: float
    high: float

    def mean_std(self, scale: float = 1.0, digits: int = 2) -> str:
        std = "n/a" if self.std is None else f"{self.std * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {std}"

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        return f"{self.mean_std(scale, digits)}  (min {self.low * scale:.{digits}f}, max {self.high * scale:.{digits}f})"


def summarize(values: Sequence[float]) -> Stats:
    """Run-to-run statistics of per-seed results (sample std: the seeds are a sample of all seeds)."""
    if not values:
        raise ValueError("no values to summarize")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.mean(values), std, min(values), max(values))


@dataclass(frozen=True)
class SeedRun:
    seed: int
    val_acc: float | None  # None: the run had no validation (refit-last)
    test_acc: float
    fit_seconds: float
    run_dir: str
    protocol: str = refit.BEST_VAL  # which checkpoint was tested (mnist_lightning/cli/refit.py)


def run_seed(seed: int, fit_args: Sequence[str]) -> SeedRun:
    """`fit` with this seed, then `test` on its model, both in this process: the best checkpoint by val/acc,
    or, where the fit ran no validation (`--data.val_size 0`, the refit), its last.ckpt."""
    start = time.perf_counter()
    with in_process():
        fit = MNISTLightningCLI(args=["fit", *fit_args, "--seed_everything", str(seed)])
    seconds = time.perf_counter() - start
    protocol = refit.protocol_of(fit.datamodule, fit.trainer.limit_val_batches)
    val_acc: float | None = None
    if protocol == refit.BEST_VAL:
        checkpoint = next((c for c in fit.trainer.checkpoint_callbacks if getattr(c, "best_model_path", "")), None)
        if checkpoint is None or checkpoint.monitor != "val/acc" or checkpoint.best_model_score is None:
            raise UserInputError("seeds tests the best checkpoint by val/acc: the config needs the default config's "
                                 "ModelCheckpoint (monitor val/acc) and at least one validation (or --data.val_size 0, "
                                 "the refit, which tests last.ckpt).")
        model_path, val_acc = checkpoint.best_model_path, float(checkpoint.best_model_score)
    else:
        model_path = str(ResumeCheckpoint.path(fit.trainer))
    test_args = shlex.split(fit.test_command(model_path))[3:]  # after `<python> -m mnist_lightning`
    progress = fit.config.fit.trainer.get("enable_progress_bar")
    test_args += ["--verbose", "false", "--trainer.enable_progress_bar", json.dumps(progress is not False)]
    with in_process():
        test = MNISTLightningCLI(args=test_args)
    return SeedRun(seed, val_acc, float(test.trainer.callback_metrics["test/acc"]), seconds, str(fit.trainer.log_dir),
                   protocol)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _val_stats(runs: Sequence[SeedRun], text: Callable[[Stats], str]) -> str:
    """The validation accuracy's statistics, over the runs that validated ("-" where none did)."""
    values = [r.val_acc for r in runs if r.val_acc is not None]
    return text(summarize(values)) if values else "- (no validation: refit-last)"


def seeds_table(runs: Sequence[SeedRun]) -> str:
    """Per seed: the protocol (`best-val`: best checkpoint by val/acc; `refit-last`: all training images, no
    validation, last.ckpt), the accuracies, the fit time and the run folder; then mean ± std."""
    rows = [[str(r.seed), r.protocol, _percent(r.val_acc), _percent(r.test_acc), f"{r.fit_seconds:.1f}", r.run_dir]
            for r in runs]
    table = format_table(["seed", "protocol", "val acc %", "test acc %", "fit s", "run folder"], rows)
    test, secs = (summarize([getattr(r, k) for r in runs]) for k in ("test_acc", "fit_seconds"))
    val = _val_stats(runs, lambda stats: stats.text(100))
    return (f"{table}\n\nval acc %   {val}\ntest acc %  {test.text(100)}\nfit s       {secs.text(1, 1)}")


def seeds_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning seeds", allow_abbrev=False,
        description="Fit one config with several seeds, test each run's model (its best checkpoint by val/acc, or "
                    "last.ckpt with --data.val_size 0), print mean ± std; other options are fit options.")
    parser.add_argument("--config", action="append", required=True, help="run config (repeatable, as for fit)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="e.g. --seeds 0 1 2")
    args, fit_args = parser.parse_known_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserInputError(f"--seeds repeats a seed ({' '.join(map(str, args.seeds))}): each seed runs once.")
    if any(a.split("=", 1)[0] == "--seed_everything" for a in fit_args):
        raise UserInputError("seeds sets seed_everything itself: drop --seed_everything and list the seeds in --seeds.")
    base_args = [*_config_args(args.config), *fit_args]
    for seed in args.seeds:  # every mistake before the first fit
        try:
            parse_fit([*base_args, "--seed_everything", str(seed)])
        except UserInputError as err:
            raise UserInputError(f"the fit options of seeds: {err}") from None
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, base_args))
        r = runs[-1]
        val = "-" if r.val_acc is None else f"{100 * r.val_acc:.2f}%"
        print(f"seed {seed} ({r.protocol}): val {val}  test {100 * r.test_acc:.2f}%  "
              f"fit {r.fit_seconds:.1f} s  {r.run_dir}", flush=True)
    print()
    print(seeds_table(runs))
    test = summarize([r.test_acc for r in runs])
    val = _val_stats(runs, lambda stats: stats.mean_std(100)).split(" (")[0]
    protocols = " ".join(dict.fromkeys(r.protocol for r in runs))
    print("\nAs a row of docs/results.md's table (config | protocol | seeds | val acc % | test acc % | test min-max | fit s):")
    print(f"| {' '.join(args.config)} | {protocols} | {' '.join(map(str, args.seeds))} | {val} | {test.mean_std(100)} | "
          f"{100 * test.low:.2f}-{100 * test.high:.2f} | {statistics.mean(r.fit_seconds for r in runs):.0f} |")


def main(argv: Sequence[str]) -> None:
    """`sweep ...` or `seeds ...` (argv[0] names the command), from `python -m mnist_lightning`."""
    {"sweep": sweep_main, "seeds": seeds_main}[argv[0]](list(argv[1:]))
