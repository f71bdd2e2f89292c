"""A trial's heartbeat: its settings, and the beats that Optuna's journal storage lacks.

RDBStorage has Optuna's heartbeat built in (`study.optimize` beats, `optuna.storages.fail_stale_trials`
reaps). Optuna's JournalStorage has none (optuna/optuna#6615), so `JournalHeartbeat` is the project's,
built on Optuna's public storage API: a thread beats into a file beside the journal while a trial runs,
and `fail_stale_journal_trials` fails the RUNNING trials whose beat is stale.
docs/experiments.md, "Storages", says how it behaves.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import optuna
from jsonargparse.typing import PositiveInt
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class Heartbeat:
    """The sweep file's `heartbeat`: a running trial beats every `interval` seconds, and is failed by the other
    workers once its last beat is older than `grace_period` seconds."""

    interval: PositiveInt = 10
    grace_period: PositiveInt = 30


def beats_folder(journal: Path) -> Path:
    """Where a journal's heartbeat files are: `<journal>.heartbeats`, beside it."""
    return journal.with_name(f"{journal.name}.heartbeats")


def beat_file(beats: Path, study_name: str, number: int) -> Path:
    """The heartbeat file of trial `number` of a study: `<study>-<number>`, the name quoted to one file name."""
    return beats / f"{urllib.parse.quote(study_name, safe='')}-{number}"


def write_beat(file: Path) -> None:
    """One beat: the writer's clock, seconds since the epoch."""
    file.write_text(repr(time.time()))


def read_beat(file: Path) -> float | None:
    """The last beat in `file` (seconds since the epoch), None before the first."""
    try:
        text = file.read_text()
    except FileNotFoundError:
        return None
    try:
        return float(text)
    except ValueError:  # being written at this moment: as fresh as can be
        return time.time()


class HeartbeatThread:
    """`with HeartbeatThread(file, interval):` beats into `file` now, then every `interval` seconds from a daemon
    thread (an Event and a Thread, like Optuna's heartbeat thread for RDBStorage) until the block ends, and
    then removes the file; a killed worker's stays, for the other workers to find stale.

    A failed write (a network filesystem's hiccup) is said once and retried at the next beat: the trial goes
    on, and is failed by the other workers only if the beats stay away for longer than the grace period.
    """

    def __init__(self, file: Path, interval: float) -> None:
        self.file, self.interval = file, interval
        self._stop, self._said = threading.Event(), False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat {file.name}", daemon=True)

    def _beat(self) -> None:
        try:
            write_beat(self.file)
        except OSError as err:
            if not self._said:
                print(f"cannot write the trial's heartbeat {self.file} ({err}); retrying every beat.",
                      file=sys.stderr, flush=True)
                self._said = True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._beat()

    def __enter__(self) -> HeartbeatThread:
        self._beat()  # the first at once, in the trial's thread
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):  # a file left behind is harmless: its trial is no longer RUNNING
            self.file.unlink(missing_ok=True)


def fail_stale_journal_trials(storage: BaseStorage, study: optuna.Study, beats: Path, grace_period: float) -> list[int]:
    """Mark FAIL each RUNNING trial of `study` whose last beat in `beats` is older than `grace_period` seconds,
    with the storage's public methods; the numbers of the trials this call failed.

    As with RDBStorage, a trial without a beat is not stale: its worker starts beating once Optuna's ask()
    returns, which may have waited for the journal's lock for a while. A beat older than the trial's start
    is not its own (a file left by an earlier study of the same name) and counts as none. A trial that
    another worker finished or failed meanwhile is left as it is.
    """
    now = time.time()
    stale = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = read_beat(beat_file(beats, study.study_name, trial.number))
        started = trial.datetime_start.timestamp() if trial.datetime_start else 0.0  # the same worker's clock
        if beat is not None and beat >= started and now - beat > grace_period:
            stale.append(trial.number)
    if not stale:
        return []
    study_id = storage.get_study_id_from_name(study.study_name)
    failed = []
    for number in stale:
        try:
            storage.set_trial_state_values(storage.get_trial_id_from_study_id_trial_number(study_id, number),
                                           TrialState.FAIL)
        except UpdateFinishedTrialError:  # another worker finished or failed it since get_trials
            continue
        failed.append(number)
    return failed


@dataclass(frozen=True)
class JournalHeartbeat:
    """The heartbeat of a sweep on Optuna's journal storage, which has none of its own (optuna/optuna#6615):
    a killed worker's trial is failed once its last beat is older than `grace_period`, so the sweep
    replaces it instead of waiting for it forever, as RDBStorage's built-in heartbeat does.

    The beats are kept beside the journal, one small file per running trial (`<journal>.heartbeats/<study>-
    <trial number>`, holding the writer's clock), not in it: a worker killed while it holds the journal's
    lock blocks the journal until Optuna breaks the lock (30 s), and beats written through the journal
    would then go stale for every live trial, which the other workers would fail. The hosts' clocks must
    agree to well within the grace period, as NTP keeps a cluster's. The files are read after open(),
    which NFS revalidates.
    """

    storage: BaseStorage
    beats: Path
    interval: float
    grace_period: float

    def file(self, study_name: str, number: int) -> Path:
        return beat_file(self.beats, study_name, number)

    def beating(self, study_name: str, number: int) -> HeartbeatThread:
        """`with heartbeat.beating(name, number):` while the trial runs."""
        return HeartbeatThread(self.file(study_name, number), self.interval)

    def around(self, objective: Callable[[optuna.Trial], float]) -> Callable[[optuna.Trial], float]:
        """`objective`, beating while it runs (where Optuna's optimize runs RDBStorage's heartbeat thread)."""
        def beating_objective(trial: optuna.Trial) -> float:
            with self.beating(trial.study.study_name, trial.number):
                return objective(trial)
        return beating_objective

    def fail_stale(self, study: optuna.Study, trial: FrozenTrial | None = None) -> list[int]:
        """fail_stale_journal_trials for this journal; also a `study.optimize` callback, so that each worker
        fails stale trials before its next trial, where Optuna does so for RDBStorage."""
        return fail_stale_journal_trials(self.storage, study, self.beats, self.grace_period)
