"""The sweep's trials: the objective (one ordinary `fit` per trial) and the loop that runs them to the study's total.

Optuna's `study.optimize` runs the trials, beats RDBStorage's heartbeat and fails stale trials before each one;
the project adds what several workers need from a total of `n_trials`: a worker waits while running trials
could still complete it, and a trial started by two workers at once beyond it is marked surplus.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.study import MaxTrialsCallback
from optuna.trial import FrozenTrial, TrialState

from mnist_lightning.callbacks.resume import TrainingDiverged, TrainingInterrupted, best_checkpoint
from mnist_lightning.cli.cli import MNISTLightningCLI
from mnist_lightning.errors import UserInputError, exception_chain
from mnist_lightning.sweeps.fit_options import ONE_DEVICE, cli_value, in_process
from mnist_lightning.sweeps.heartbeat import JournalHeartbeat
from mnist_lightning.sweeps.pruning import PruneHopelessTrials
from mnist_lightning.sweeps.study import FINISHED, counts
from mnist_lightning.sweeps.sweep_file import Sweep


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


class SweepStopped(BaseException):
    """Ends the sweep from inside a trial, which it marks failed first: Ctrl+C or SIGTERM (`code`, 128 + the
    signal), or a user's mistake (`error`) that only a trial could find.

    Not an Exception, as SystemExit is not: Optuna's optimize logs every Exception of a trial with its
    traceback (and a KeyboardInterrupt too) before raising it again, and lets this through as it is.
    """

    def __init__(self, code: int = 2, error: UserInputError | None = None) -> None:
        super().__init__(code)
        self.code, self.error = code, error

    def fail(self, trial: optuna.Trial) -> SweepStopped:
        """Mark the trial failed now (unless another worker already did), instead of after its heartbeat went stale."""
        trial.study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        return self


def ignore_further_interrupts() -> None:
    """After the first Ctrl+C: the trial is being marked failed and the sweep is ending; a second must not
    break that."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread
        pass


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
            ignore_further_interrupts()
            raise SweepStopped(code=130).fail(trial) from None

    def run(self, trial: optuna.Trial) -> float:
        # Two workers may ask for the last trial the study needs at the same moment: the later number is surplus.
        if self.n_trials is not None:  # the count before this trial's number, which the storage assigned
            before = [t for t in trial.study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING))
                      if t.number < trial.number]
            if len(before) >= self.n_trials:
                trial.set_user_attr("surplus", True)
                raise _SurplusTrial(f"trial {trial.number} not needed: "
                                    f"the study already has its {self.n_trials} trials")
        params = {key: suggest(trial, key, d) for key, d in self.sweep.search_space.items()}
        args = ["fit", *self.base_args, *(a for k, v in params.items() for a in (f"--{k}", cli_value(v))), *ONE_DEVICE]
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = PruneHopelessTrials(trial, self.sweep.metric)
        start = time.perf_counter()
        stop = None
        try:
            with in_process():
                cli = MNISTLightningCLI(args=args, callbacks=[pruning],
                                        resume_hint=False)  # the sweep says how to go on
        except TrainingDiverged as err:
            trial.set_user_attr("diverged", True)
            raise optuna.TrialPruned(f"training diverged: {err}") from None
        except TrainingInterrupted as err:  # in the fit: last.ckpt written, the run's resume line printed
            ignore_further_interrupts()
            stop = SweepStopped(code=err.code if isinstance(err.code, int) else 130)
        except UserInputError as err:
            stop = SweepStopped(error=UserInputError(f"trial {trial.number} (marked failed): {err}"))
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 1))
        if stop is not None:
            raise stop.fail(trial)
        best = best_checkpoint(cli.trainer)
        trial.set_user_attr("best_checkpoint", best and os.path.abspath(best.best_model_path))
        if pruning.pruned_at is not None:
            raise optuna.TrialPruned(f"{self.sweep.metric} at epoch {pruning.pruned_at} was hopeless")
        value = cli.trainer.callback_metrics.get(self.sweep.metric)
        if value is None:
            raise SweepStopped(error=UserInputError(
                f"trial {trial.number} (marked failed) ran no validation, so it has no {self.sweep.metric}: check the "
                "fit options.")).fail(trial)
        return float(value)


def fail_stale(study: optuna.Study, heartbeat: JournalHeartbeat | None) -> None:
    """Fail the trials of killed workers: by RDBStorage's heartbeat (Optuna's), or a journal's (the project's)."""
    if heartbeat is None:
        optuna.storages.fail_stale_trials(study)  # nothing for a storage without a heartbeat
    else:
        heartbeat.fail_stale(study)


def run_trials(study: optuna.Study, objective: Callable[[optuna.Trial], float], n_trials: int | None,
               timeout: float | None, poll_s: float, heartbeat: JournalHeartbeat | None = None) -> None:
    """Run trials until the study holds `n_trials` finished ones (all workers together) or `timeout` seconds passed.

    `study.optimize` runs them and stops once the finished and running trials could make the total; this
    worker then waits for the running ones (or for their heartbeat to go stale) instead of starting more,
    and goes on if one of them fails. A journal storage's `heartbeat` beats while this worker's trial runs
    and fails stale trials after each trial, as Optuna does for RDBStorage before each.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    run = objective if heartbeat is None else heartbeat.around(objective)
    callbacks: list[Callable[[optuna.Study, FrozenTrial], Any]] = [] if heartbeat is None else [heartbeat.fail_stale]
    if n_trials is not None:
        # Running trials count too: MaxTrialsCallback's usual count of finished ones lets each worker run one more.
        callbacks.append(MaxTrialsCallback(n_trials, states=(*FINISHED, TrialState.RUNNING)))
    said, ran = False, False
    while deadline is None or time.monotonic() < deadline:
        fail_stale(study, heartbeat)  # study.optimize does so only before a trial it starts: not while this waits
        finished, running = counts(study)
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
        left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
        try:
            study.optimize(run, timeout=left, catch=(_SurplusTrial,), callbacks=callbacks)
        except (ValueError, AssertionError) as err:
            if not _failed_elsewhere(err):
                raise
            print("another worker failed this worker's trial, whose heartbeat had gone stale (paused, overloaded or "
                  "cut off from the storage for longer than grace_period); its run folder stays, "
                  "and the sweep goes on.",
                  file=sys.stderr, flush=True)
        ran = True


def _failed_elsewhere(err: BaseException) -> bool:
    """Whether Optuna could not record this worker's trial because it was no longer running: its
    "Cannot tell a FAIL trial", which Optuna may wrap in an AssertionError of its own."""
    return any(isinstance(e, ValueError) and str(e).startswith("Cannot tell a") for e in exception_chain(err))
