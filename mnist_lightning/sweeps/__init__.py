"""Hyperparameter sweeps (Optuna) and seed repeats: `python -m mnist_lightning sweep|seeds`. Each trial and each
seed is an ordinary `fit` run.

    command.py      the `sweep` command and `main`, which dispatches `sweep` and `seeds`
    sweep_file.py   the sweep file, parsed by jsonargparse: search space, sampler and pruner class paths
    fit_options.py  the trials' fit command line, parsed and checked before any trial
    study.py        the Optuna study: its name, opening it, what its trials share
    trials.py       the objective (one fit per trial) and the loop that runs trials to the study's total
    pruning.py      the callback that reports the metric to Optuna and stops a hopeless fit
    sampler.py      a sampler seeded per trial
    summary.py      the trials table, the importances and best.yaml
    seeds.py        the `seeds` command
    storage.py      where the study lives: SQLite, a journal file, PostgreSQL
    heartbeat.py    the heartbeat settings, and the journal storage's beats
    tables.py       plain-text tables
"""
