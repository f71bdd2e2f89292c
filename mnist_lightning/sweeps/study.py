"""The sweep's Optuna study: its name, opening it in its storage, and what every one of its trials shares."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import optuna
import sqlalchemy.exc
from jsonargparse import Namespace
from optuna.storages import BaseStorage
from optuna.trial import TrialState

from mnist_lightning.checkpoints.parts import part_settings, without_init_args
from mnist_lightning.errors import UserInputError, first_line
from mnist_lightning.sweeps.fit_options import cli_value
from mnist_lightning.sweeps.storage import StorageSpec, open_storage
from mnist_lightning.sweeps.sweep_file import Sweep

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
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
    attribute, in every storage); so does a study that holds no record yet."""
    stored = study.user_attrs.get(TRIALS_SHARE)
    if stored is None:
        study.set_user_attr(TRIALS_SHARE, settings)
        stored = study.user_attrs[TRIALS_SHARE]  # read back: a worker that recorded at the same moment may have won
    differences = _differences(stored, settings)
    if differences:
        more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
        raise UserInputError(
            f"the study {study.study_name!r} in {storage.shown} holds trials trained otherwise: "
            f"{'; '.join(differences[:3])}"
            f"{more}. Its trials would not compare with these: give the study's settings again, or start a new study "
            "with --name NEW_NAME.")


def open_study(name: str, spec: StorageSpec, sweep: Sweep, create: bool = True) -> tuple[optuna.Study, BaseStorage]:
    """The sweep's study, created on first use, and its storage; several workers opening it at once is fine."""
    url = spec.shown
    for attempt in range(3):
        try:
            storage = open_storage(spec, sweep.heartbeat)
            if not create:
                return optuna.load_study(study_name=name, storage=storage, sampler=sweep.sampler,
                                         pruner=sweep.pruner), storage
            study = optuna.create_study(study_name=name, storage=storage, sampler=sweep.sampler, pruner=sweep.pruner,
                                        direction=sweep.direction, load_if_exists=True)
            break
        except KeyError:
            raise UserInputError(f"no sweep named {name!r} in {url}: "
                                 "run the sweep first (same --name and --storage).") from None
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


def counts(study: optuna.Study) -> tuple[int, int]:
    """(finished, running) trials in the storage: what every worker sees."""
    trials = study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
    running = sum(t.state == TrialState.RUNNING for t in trials)
    return len(trials) - running, running
