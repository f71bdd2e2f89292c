"""What a sweep's study says: its trials, the searched options' importances, and best.yaml to train the best again."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from mnist_lightning.commands import mnist_command
from mnist_lightning.errors import UserInputError
from mnist_lightning.sweeps.study import counts
from mnist_lightning.sweeps.tables import format_table


def _format_value(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _trial_metric(trial: FrozenTrial) -> str:
    if trial.state == TrialState.COMPLETE:
        return f"{trial.value:.4f}"
    if trial.intermediate_values:
        return f"{trial.intermediate_values[max(trial.intermediate_values)]:.4f}"
    return "-"


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

    The study holds the config (user attribute `config`), so this works on any worker; for a trial without
    that attribute, the file in its run folder is read.
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
    finished, running = counts(study)
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
