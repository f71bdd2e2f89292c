"""The `sweep` command, and `main`, which `python -m mnist_lightning` calls for `sweep` and `seeds`.

    python -m mnist_lightning sweep --config configs/sweeps/tutorial.yaml --n_trials 3 --data.data_dir D
    python -m mnist_lightning sweep --config configs/sweeps/tutorial.yaml --summary

A sweep keeps its Optuna study in `lightning_logs/sweeps/<name>/study.db`, or where --storage says (a journal
file on a shared filesystem, a PostgreSQL server: sweeps/storage.py): the same command started again continues
it, and several started together, on one machine or many, share it. Every trial is an ordinary `fit` run.
docs/experiments.md describes the sweep file, storages, resuming, parallel workers, pruning and best.yaml.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import optuna
from jsonargparse import Namespace
from jsonargparse.typing import PositiveFloat, PositiveInt

from mnist_lightning.errors import UserInputError
from mnist_lightning.sweeps.fit_options import check_one_batch, check_search_space, config_args, parse_fit
from mnist_lightning.sweeps.seeds import seeds_main
from mnist_lightning.sweeps.storage import heartbeat_of, parse_storage
from mnist_lightning.sweeps.study import check_trials_share, open_study, study_name, trial_settings
from mnist_lightning.sweeps.summary import summarize_sweep
from mnist_lightning.sweeps.sweep_file import load_sweep
from mnist_lightning.sweeps.trials import Objective, SweepStopped, ignore_further_interrupts, run_trials


@contextmanager
def folder_for(folder: Path) -> Iterator[None]:
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


def _logs_root(config: Namespace) -> Path:
    logger = config.trainer.get("logger")
    logger = logger[0] if isinstance(logger, list) and logger else logger
    save_dir = logger.get("init_args", Namespace()).get("save_dir") if isinstance(logger, Namespace) else None
    return Path(save_dir or "lightning_logs")


def sweep_main(argv: Sequence[str]) -> None:
    """`sweep ARGS`: run (or continue) the sweep, or with --summary print it; other options are fit options."""
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning sweep", allow_abbrev=False, exit_on_error=False,
        description="Run (or continue) an Optuna sweep; other options are fit options applied to every trial.")
    parser.add_argument("--config", required=True, action="append", type=Path, help="the sweep file")
    parser.add_argument("--n_trials", type=PositiveInt, help="total finished trials of the study (overrides the file)")
    parser.add_argument("--timeout", type=PositiveFloat,
                        help="start no trial after this many seconds (overrides the file)")
    parser.add_argument("--storage", help="sqlite:///FILE (default <logs>/sweeps/<name>/study.db, one machine), "
                        "journal:FILE (a shared filesystem) or a database URL (postgresql+psycopg://user@host/db)")
    parser.add_argument("--name", help="study name (default: the sweep file's name)")
    parser.add_argument("--summary", action="store_true", help="print the trials and write best.yaml; run no trial")
    try:
        args, fit_args = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:  # a value its type refuses, e.g. --n_trials 0
        raise UserInputError(str(err)) from None
    if len(args.config) > 1:
        raise UserInputError("sweep takes one sweep file (--config); list its run configs under `configs:` in it.")
    sweep = load_sweep(args.config[0])
    name = study_name(args.name, sweep)
    n_trials = sweep.n_trials if args.n_trials is None else args.n_trials
    timeout = sweep.timeout if args.timeout is None else args.timeout
    if n_trials is None and timeout is None and not args.summary:
        raise UserInputError("the sweep needs an end: set n_trials or timeout in the sweep file, or pass --n_trials N.")
    given = {a.split("=", 1)[0].removeprefix("--") for a in fit_args if a.startswith("--")}
    searched = given & set(sweep.search_space)
    if searched:
        raise UserInputError(f"{', '.join(sorted(searched))} is searched by the sweep: drop it from the command line.")
    base_args = [*config_args(sweep.configs), *fit_args]
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
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's heartbeat is experimental
        if args.summary:
            if not storage.exists():
                raise UserInputError(f"no sweep {name!r} here: {storage.shown} does not exist (run the sweep first, "
                                     "or pass its --storage).")
            with folder_for(sweep_dir):  # for best.yaml, also where no trial ran
                summarize_sweep(open_study(name, storage, sweep, create=False)[0], sweep_dir, sweep.metric)
            return
        check_search_space(sweep.search_space, base_args)
        check_one_batch(sweep, base_args)  # the data and the metric, before any folder or study exists
        with folder_for(sweep_dir):
            study, opened = open_study(name, storage, sweep)
            check_trials_share(study, trial_settings(config, sweep), storage)
            heartbeat = heartbeat_of(storage, opened, sweep.heartbeat)
            print(f"Sweep {name!r}: study {storage.shown}, {sweep.direction} {sweep.metric}, "
                  f"{n_trials if n_trials is not None else 'unlimited'} trials, timeout {timeout or 'none'}.",
                  flush=True)
            try:
                run_trials(study, Objective(sweep, base_args, n_trials), n_trials, timeout,
                           poll_s=min(sweep.heartbeat.interval, 5), heartbeat=heartbeat)
            except SweepStopped as stop:
                if stop.error is not None:
                    raise stop.error from None
                print("interrupted: the running trial is marked failed; the same command continues the sweep.",
                      file=sys.stderr)
                raise SystemExit(stop.code) from None
            except KeyboardInterrupt:  # between trials (counting them, waiting for other workers' trials)
                ignore_further_interrupts()
                print("interrupted between trials; the same command continues the sweep.", file=sys.stderr)
                raise SystemExit(130) from None
        print()
        summarize_sweep(study, sweep_dir, sweep.metric)


def main(argv: Sequence[str]) -> None:
    """`sweep ...` or `seeds ...` (argv[0] names the command), from `python -m mnist_lightning`."""
    {"sweep": sweep_main, "seeds": seeds_main}[argv[0]](list(argv[1:]))
