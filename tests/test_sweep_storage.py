"""Sweep storages (mnist_lightning/sweeps/storage.py, heartbeat.py): `--storage` parsed and checked; three
workers, each in a folder of its own as on three machines, on a real PostgreSQL server and on one journal
file, one of them SIGKILLed mid-trial and started again; the SLURM recipe run with bash as SLURM would run
its array tasks.

The PostgreSQL test starts a throwaway server itself (Debian's initdb/pg_ctl, as an unprivileged user when run
as root), on 127.0.0.1 and a free port, and stops it at the end. Where the server or the psycopg driver is
missing it skips, except under CI (the CI variable set), where it fails: CI must run it (.ci/run installs both).
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import optuna
import pytest
import sqlalchemy.engine
import sqlalchemy.exc
import yaml
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli, start_forked
from forked_cli import ForkedProcess
from optuna.trial import TrialState

from mnist_lightning.errors import UserInputError
from mnist_lightning.sweeps.command import sweep_main
from mnist_lightning.sweeps.heartbeat import Heartbeat, fail_stale_journal_trials, write_beat
from mnist_lightning.sweeps.storage import (
    POSTGRES_EXTRA,
    StorageSpec,
    heartbeat_of,
    mount_of,
    network_filesystem,
    open_storage,
    parse_storage,
)
from mnist_lightning.sweeps.summary import importances_table
from mnist_lightning.sweeps.trials import run_trials

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),  # Optuna's heartbeat
              pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")]
HEARTBEAT = Heartbeat(interval=1, grace_period=3)
MOUNTS = """\
/dev/vda1 / ext4 rw,relatime 0 0
server:/export/shared /shared nfs4 rw,relatime,vers=4.2 0 0
/dev/vdb1 /shared/scratch ext4 rw,relatime 0 0
//nas/team /mnt/team\\040share cifs rw,relatime 0 0
lustre@tcp:/fs /lustre lustre rw 0 0
"""


# ------------------------------------------------------------------------------------------- --storage
def test_default_is_a_sqlite_file_in_the_sweep_folder(tmp_path):
    spec = parse_storage(None, tmp_path / "lightning_logs" / "sweeps" / "tiny" / "study.db")
    assert spec == StorageSpec("sqlite", f"sqlite:///{tmp_path.resolve()}/lightning_logs/sweeps/tiny/study.db")
    assert not spec.exists()


def test_journal_names_a_file_after_the_prefix(tmp_path, monkeypatch):
    assert (parse_storage("journal:/shared/sweeps/mnist.log", tmp_path)
            == StorageSpec("journal", "/shared/sweeps/mnist.log"))
    monkeypatch.chdir(tmp_path)
    spec = parse_storage("journal:sweeps/mnist.log", tmp_path)  # relative to the working folder, made absolute
    assert spec.target == str(tmp_path / "sweeps" / "mnist.log") and spec.shown == f"journal:{spec.target}"


def test_a_database_url_is_shown_without_its_password(tmp_path):
    spec = parse_storage("postgresql+psycopg://sweeper:secret@db.example/optuna", tmp_path)
    assert spec.kind == "database" and spec.exists()
    assert "secret" not in spec.shown and spec.shown.startswith("postgresql+psycopg://sweeper:")


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://sweeper@db.example/optuna?password=SECRET",
    "postgresql+psycopg://sweeper:SECRET@db.example:5433/optuna?sslmode=require&sslpassword=SECRET",
    "postgresql://sweeper@db.example/optuna?application_name=mnist&PASSWORD=SECRET&password=SECRET",
])
def test_every_password_a_url_carries_is_masked(tmp_path, url):
    """libpq takes a password from the URL's userinfo or from its query (`password`, `sslpassword`): neither is
    shown."""
    shown = parse_storage(url, tmp_path).shown
    assert "SECRET" not in shown and "sweeper" in shown and "db.example" in shown, shown
    assert "application_name=mnist" in shown or "application_name" not in url  # what is not a secret stays readable
    assert re.search(r"password=\*\*\*", shown, re.IGNORECASE), shown


def _sweep_on(storage: str, data: Path, cwd: Path):
    return run_cli("sweep", "--config", str(write_sweep(cwd, n_trials=1)), "--storage", storage, *fit_args(data, 1),
                   "--trainer.limit_train_batches", "2", cwd=cwd)


def _one_error_line(result) -> str:
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.rstrip("\n").splitlines()[-1]
    assert last.startswith("error: "), result.stderr[-3000:]
    return last


@pytest.mark.slow
def test_a_refused_connection_is_reported_without_the_password(shared_tiny_data, tmp_path):
    """The sweep's error names the server it could not reach, with both the userinfo and the query password masked
    (a closed port on this machine: refused at once, no server needed)."""
    url = f"postgresql+psycopg://sweeper:SECRET@127.0.0.1:{free_port()}/optuna?password=SECRET"
    result = _sweep_on(url, shared_tiny_data, tmp_path)
    line = _one_error_line(result)
    assert "127.0.0.1" in line and "sweeper:***@" in line, line
    assert "SECRET" not in result.stdout + result.stderr


@pytest.mark.parametrize("port", ["abc", "5432x", "99999", "0"])
def test_a_port_that_is_not_a_port_is_one_line(shared_tiny_data, tmp_path, port):
    url = f"postgresql+psycopg://sweeper:SECRET@127.0.0.1:{port}/optuna"
    line = _one_error_line(_sweep_on(url, shared_tiny_data, tmp_path))
    assert "--storage" in line and f"port {port!r}" in line and ":5432/" in line, line
    assert "SECRET" not in line
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything ran


@pytest.mark.parametrize(("value", "message"), [
    ("journal:", "name the journal file after `journal:`"),
    ("study.db", "--storage takes sqlite:///PATH, journal:PATH"),
    ("sweeper:SECRET@db.example/optuna?password=SECRET",
     "got 'sweeper:\\*\\*\\*@db.example/optuna\\?password=\\*\\*\\*'"),
])
def test_other_forms_are_refused(tmp_path, value, message):
    with pytest.raises(UserInputError, match=message) as caught:
        parse_storage(value, tmp_path)
    assert "SECRET" not in str(caught.value)


@pytest.mark.parametrize("url", ["postgresql+psycopg://sweeper@127.0.0.1:1/optuna", "postgresql://sweeper@127.0.0.1:1/optuna"])
def test_postgres_without_its_driver_names_the_extra(tmp_path, monkeypatch, url):
    for module in ("psycopg", "psycopg2"):
        monkeypatch.setitem(sys.modules, module, None)  # `import psycopg` now fails, as where it is not installed
    with pytest.raises(UserInputError) as caught:
        open_storage(parse_storage(url, tmp_path), HEARTBEAT)
    message = str(caught.value)
    assert "\n" not in message and POSTGRES_EXTRA in message and "PostgreSQL driver is not installed" in message
    assert "import of psycopg" in message  # the module that is missing
    # SQLAlchemy 2.1 reads postgresql:// with psycopg too; before, with psycopg2: then the URL to write is named.
    psycopg2 = sqlalchemy.engine.make_url(url).get_driver_name() == "psycopg2"
    assert ("write the URL as postgresql+psycopg://" in message) == psycopg2


def test_the_mount_holding_a_path_is_the_longest_mount_point_above_it():
    assert mount_of(Path("/shared/sweeps/study.db"), MOUNTS) == ("/shared", "nfs4")
    assert mount_of(Path("/shared/scratch/study.db"), MOUNTS) == ("/shared/scratch", "ext4")
    assert mount_of(Path("/sharedfoo/study.db"), MOUNTS) == ("/", "ext4")  # a path prefix, not a string prefix
    assert mount_of(Path("/mnt/team share/study.db"), MOUNTS) == ("/mnt/team share", "cifs")  # \040 is a space
    over = MOUNTS + "tmpfs /shared tmpfs rw 0 0\n"  # mounted over the NFS share: the later one is what is there
    assert mount_of(Path("/shared/study.db"), over) == ("/shared", "tmpfs")


@pytest.mark.parametrize(("path", "network"), [
    ("/shared/a/study.db", True), ("/mnt/team share/study.db", True), ("/lustre/study.db", True),
    ("/shared/scratch/study.db", False), ("/home/me/study.db", False),
])
def test_network_filesystems_are_recognised(path, network):
    assert (network_filesystem(Path(path), MOUNTS) is not None) == network


def test_sqlite_on_a_network_filesystem_is_refused_with_the_journal_advice(tmp_path):
    mounts = f"/dev/vda1 / ext4 rw 0 0\nserver:/export {tmp_path} nfs rw 0 0\n"
    db = tmp_path / "sweeps" / "tiny" / "study.db"
    db.parent.mkdir(parents=True)
    spec = parse_storage(None, db)
    with pytest.raises(UserInputError) as caught:
        open_storage(spec, HEARTBEAT, mounts=mounts)
    message = str(caught.value)
    assert f"network filesystem (nfs at {tmp_path})" in message and "\n" not in message
    assert f"--storage journal:{db.resolve().with_suffix('.log')}" in message
    assert not db.exists()  # refused before SQLite created anything
    open_storage(spec, HEARTBEAT, mounts="/dev/vda1 / ext4 rw 0 0\n")  # on a local disk it opens
    assert db.is_file()


def test_a_journal_file_needs_its_folder(tmp_path):
    with pytest.raises(UserInputError, match="does not exist; create it on the filesystem that every worker shares"):
        open_storage(parse_storage(f"journal:{tmp_path}/missing/mnist.log", tmp_path), HEARTBEAT)


def test_the_journal_fails_a_trial_whose_heartbeat_is_stale(tmp_path):
    spec = parse_storage(f"journal:{tmp_path}/mnist.log", tmp_path)
    storage = open_storage(spec, HEARTBEAT)
    assert type(storage) is optuna.storages.JournalStorage  # Optuna's own, the heartbeat beside it
    heartbeat = heartbeat_of(spec, storage, Heartbeat(interval=1, grace_period=1))
    assert heartbeat is not None and heartbeat.beats == tmp_path / "mnist.log.heartbeats" and heartbeat.beats.is_dir()
    study = optuna.create_study(study_name="s", storage=storage)
    write_beat(heartbeat.file("s", 2))  # left by an earlier study of the same name: not trial 2's beat
    time.sleep(0.05)
    beating, silent, unborn = study.ask(), study.ask(), study.ask()
    with heartbeat.beating("s", beating.number) as thread:  # what the worker runs around its objective
        write_beat(heartbeat.file("s", silent.number))  # one beat, then its worker is SIGKILLed
        assert fail_stale_journal_trials(storage, study, heartbeat.beats, 1) == []
        time.sleep(1.5)
        snapshot = study.get_trials()
        assert heartbeat.fail_stale(study) == [silent.number]  # what every worker calls before a trial
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.FAIL, TrialState.RUNNING]
        assert time.time() - float(heartbeat.file("s", beating.number).read_text()) < 1.2  # beaten again meanwhile
        assert thread.file == tmp_path / "mnist.log.heartbeats" / "s-0"
    assert not heartbeat.file("s", beating.number).exists() and not any(t.name.startswith("heartbeat ")
                                                                       for t in threading.enumerate())
    write_beat(heartbeat.file("s", silent.number))  # a late beat of a failed trial (a paused worker) changes nothing
    time.sleep(1.1)
    assert heartbeat.fail_stale(study) == [] and study.get_trials()[1].state == TrialState.FAIL
    assert unborn.number == 2 and study.get_trials()[2].state == TrialState.RUNNING
    # Another worker failed it after this one read the trials: the storage refuses, the reaper moves on.
    study.get_trials = lambda **_: [t for t in snapshot if t.number == silent.number]
    assert fail_stale_journal_trials(storage, study, heartbeat.beats, 0.5) == []


@pytest.mark.parametrize("then", ["returns", "writes"])
def test_a_worker_whose_trial_another_worker_failed_goes_on(tmp_path, capsys, then):
    spec = parse_storage(f"journal:{tmp_path}/mnist.log", tmp_path)
    storage = open_storage(spec, HEARTBEAT)
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    heartbeat = heartbeat_of(spec, storage, HEARTBEAT)

    def objective(trial: optuna.Trial) -> float:
        assert heartbeat.file("s", trial.number).is_file()  # beating while it runs
        if trial.number == 0:  # what another worker's fail_stale_journal_trials does to a worker paused too long
            study_id = storage.get_study_id_from_name("s")
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, 0)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
            if then == "writes":  # e.g. the next epoch's report: Optuna refuses it
                trial.report(0.5, step=1)
        return 1.0

    run_trials(study, objective, n_trials=2, timeout=None, poll_s=0.1, heartbeat=heartbeat)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert "another worker failed this worker's trial, whose heartbeat had gone stale" in capsys.readouterr().err
    assert list(heartbeat.beats.iterdir()) == []  # each trial's beat ended with it


# ------------------------------------------------------------------------------------------- the study's view
def test_importances_name_the_option_that_moves_the_metric():
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: t.suggest_float("model.lr", 0, 1) + 0.001 * t.suggest_int("data.batch_size", 32, 64),
                   n_trials=30)
    table = importances_table(study)
    assert table.startswith("Parameter importances (PED-ANOVA over 30 complete trials, summing to 1):")
    rows = [line.split() for line in table.splitlines()[2:]]
    assert [r[0] for r in rows] == ["model.lr", "data.batch_size"] and float(rows[0][1]) > 0.9


def test_importances_say_so_when_the_trials_cannot_tell():
    study = optuna.create_study(direction="maximize")
    assert importances_table(study) == "Parameter importances: need at least 2 complete trials."
    study.optimize(lambda t: 1.0 + 0 * t.suggest_float("model.lr", 0, 1), n_trials=3)  # no option changes anything
    assert importances_table(study) == ("Parameter importances: the 3 complete trials do not tell the searched "
                                        "options apart.")


# ------------------------------------------------------------------------------------------- helpers
def require(what: str) -> None:
    """Skip where a tool is missing; fail under CI, which must run these tests."""
    if os.environ.get("CI"):
        pytest.fail(f"{what}: CI must run this test (.ci/run installs PostgreSQL; `make test` installs .[postgres])")
    pytest.skip(what)


def postgres_bindir() -> Path | None:
    """The folder of Debian's initdb and pg_ctl (not on PATH there), or of the ones on PATH."""
    candidates = []
    if shutil.which("pg_config"):
        pg_config = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(pg_config.stdout.strip()))
    newest_first = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True,
                          key=lambda p: [int(n) for n in re.findall(r"\d+", p.parent.name)])
    candidates += newest_first
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL server with an empty database `optuna`; stopped (immediately) and deleted afterwards."""
    bindir = postgres_bindir()
    if bindir is None:
        require("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        require(f"no PostgreSQL driver: {POSTGRES_EXTRA}")
    as_user: list[str] = []
    # In /tmp, which any user may enter (pytest's tmp_path is root's own), and short: the server's socket lives here.
    home = Path(tempfile.mkdtemp(prefix="pg-sweep-", dir="/tmp" if Path("/tmp").is_dir() else None))
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        user = next(u for u in ("postgres", "nobody") if _has_user(u))
        os.chown(home, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        as_user = ["runuser", "-u", user, "--"]
    data, port = home / "data", free_port()
    options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={home} -c fsync=off"
    try:
        for command in ([*as_user, bindir / "initdb", "-D", data, "-U", "sweeper", "--auth=trust", "-E", "UTF8",
                         "--no-sync"],
                        [*as_user, bindir / "pg_ctl", "-D", data, "-l", home / "server.log", "-w", "-t", "60",
                         "-o", options, "start"],
                        [bindir / "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "sweeper", "optuna"]):
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                log = (home / "server.log").read_text()[-2000:] if (home / "server.log").is_file() else ""
                pytest.fail(f"{' '.join(map(str, command))} failed:\n{done.stdout}{done.stderr}{log}")
        yield f"postgresql+psycopg://sweeper@127.0.0.1:{port}/optuna"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run([*as_user, bindir / "pg_ctl", "-D", data, "stop", "-m", "immediate"], capture_output=True,
                           timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_the_sweep_banner_and_summary_show_the_server_without_the_password(postgres_url, shared_tiny_data, tmp_path):
    """On a real server (trust authentication: the passwords are sent and ignored), nothing the sweep prints
    carries them: the banner names the study's server with both masked."""
    url = postgres_url.replace("sweeper@", "sweeper:SECRET@") + "?password=SECRET"
    ran = _sweep_on(url, shared_tiny_data, tmp_path)
    assert ran.returncode == 0, ran.stderr[-3000:]
    banner = next(line for line in ran.stdout.splitlines() if line.startswith("Sweep 'tiny': study "))
    assert "sweeper:***@127.0.0.1" in banner and "password=***" in banner, banner
    summary = run_cli("sweep", "--config", str(tmp_path / "tiny.yaml"), "--storage", url, "--summary", cwd=tmp_path)
    assert summary.returncode == 0 and " COMPLETE " in summary.stdout, summary.stderr[-3000:]
    assert "SECRET" not in ran.stdout + ran.stderr + summary.stdout + summary.stderr


def _has_user(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def write_sweep(folder: Path, n_trials: int) -> Path:
    """A sweep over the tutorial config: no pruning, a 1 s heartbeat (stale after 3 s)."""
    spec = {
        "configs": [str(PROJECT_ROOT / "configs" / "seed.yaml")],
        "n_trials": n_trials,
        "pruner": "optuna.pruners.NopPruner",
        "heartbeat": dataclasses.asdict(HEARTBEAT),
        "search_space": {
            "model.optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "model.net.init_args.hidden_sizes": {"type": "categorical", "choices": [[8], [16]]},
        },
    }
    path = folder / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fit_args(data: Path, epochs: int) -> list[str]:
    return ["--data.data_dir", str(data), *TINY_ARGS, "--torch_threads", "1", "--trainer.max_epochs", str(epochs)]


def reader(storage: str) -> optuna.storages.BaseStorage:
    """A plain Optuna storage on the study, for the test to watch it (no heartbeat, no writes)."""
    if storage.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(storage.removeprefix("journal:"))
        return optuna.storages.JournalStorage(backend)
    return optuna.storages.RDBStorage(storage)


def wait_for_a_trial_in_fit(storage: str, pids: dict[int, int], timeout: float) -> tuple[int, int]:
    """(worker index, trial number) of the first trial seen in its fit (its run folder recorded) by one of `pids`."""
    deadline, study = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        time.sleep(0.1)
        try:
            study = study or optuna.load_study(study_name="tiny", storage=reader(storage))
        except (KeyError, RuntimeError, sqlalchemy.exc.SQLAlchemyError):  # no study yet, or its tables are half made
            continue
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            pid = int(trial.user_attrs.get("worker", ":0").rsplit(":", 1)[1])
            if "run_dir" in trial.user_attrs and pid in pids.values():
                return next(i for i, p in pids.items() if p == pid), trial.number
    raise AssertionError("no trial started its fit in time")


# ------------------------------------------------------------------------------------------- three workers
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_three_workers_in_their_own_folders_share_one_study_and_survive_a_sigkill(kind, request, tiny_data, tmp_path,
                                                                                  monkeypatch, capsys):
    shared = tmp_path / "shared"  # the journal's shared filesystem
    shared.mkdir()
    storage = request.getfixturevalue("postgres_url") if kind == "postgresql" else f"journal:{shared}/tiny.log"
    n_trials = 4
    args = ["sweep", "--config", str(write_sweep(tmp_path, n_trials)), "--storage", storage, *fit_args(tiny_data, 4)]
    folders = [tmp_path / f"machine{i}" for i in range(3)]
    workers: dict[str, ForkedProcess] = {}
    try:
        for i, folder in enumerate(folders):
            folder.mkdir()
            workers[f"worker{i}"] = start_forked(*args, cwd=folder, log=tmp_path / f"worker{i}.log")
        pids = {i: workers[f"worker{i}"].pid for i in range(3)}
        victim, killed_number = wait_for_a_trial_in_fit(storage, pids, timeout=240)
        os.killpg(workers[f"worker{victim}"].pid, signal.SIGKILL)  # mid-trial, the whole process group
        killed_at = datetime.now()
        workers[f"worker{victim}"].wait()
        workers["restarted"] = start_forked(*args, cwd=folders[victim], log=tmp_path / "restarted.log")
        pids[victim] = workers["restarted"].pid
        for name, worker in workers.items():
            if name != f"worker{victim}":  # every worker that was not killed ends cleanly, wherever the best run is
                assert worker.wait(timeout=300) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    finally:
        for worker in workers.values():
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)

    trials = optuna.load_study(study_name="tiny", storage=reader(storage)).get_trials()
    assert [t.number for t in trials] == list(range(len(trials)))  # no trial number twice
    states = Counter(t.state.name for t in trials)
    assert states["COMPLETE"] == n_trials and set(states) <= {"COMPLETE", "FAIL"}, states
    killed = trials[killed_number]
    assert killed.state == TrialState.FAIL and not killed.user_attrs.get("surplus")
    # Failed after the kill, so by another worker, which fails only trials whose heartbeat is stale; the journal
    # keeps the beats in files, where a killed worker's last one stays, so there the grace period itself is checked.
    assert killed.datetime_complete > killed_at
    if kind == "journal":
        assert [p.name for p in (shared / "tiny.log.heartbeats").iterdir()] == [f"tiny-{killed_number}"]
        last_beat = float((shared / "tiny.log.heartbeats" / f"tiny-{killed_number}").read_text())
        assert killed.datetime_complete.timestamp() - last_beat > HEARTBEAT.grace_period
    assert all(t.user_attrs.get("surplus") for t in trials if t.state == TrialState.FAIL and t is not killed)
    folder_of = {pid: folders[i] for i, pid in pids.items()} | {workers[f"worker{victim}"].pid: folders[victim]}
    ran = [t for t in trials if "run_dir" in t.user_attrs]
    assert len(ran) == n_trials + 1 and len({t.user_attrs["run_dir"] for t in ran}) == len(ran)
    for trial in ran:  # which host holds the run, and its absolute folder, in the worker's own folder
        run_dir, pid = Path(trial.user_attrs["run_dir"]), int(trial.user_attrs["worker"].rsplit(":", 1)[1])
        assert trial.user_attrs["host"] == socket.gethostname() and run_dir.is_absolute()
        assert run_dir.parent == folder_of[pid] / "lightning_logs" and (run_dir / "config.yaml").is_file()

    best_files = [(f / "lightning_logs" / "sweeps" / "tiny" / "best.yaml").read_text() for f in folders]
    assert len(set(best_files)) == 1  # the same best.yaml, written on every worker
    elsewhere = tmp_path / "laptop"  # a folder with no run at all: the study holds what the summary needs
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    sweep_main(["--config", str(tmp_path / "tiny.yaml"), "--storage", storage,
                "--summary"])  # in-process: one start less
    summary = capsys.readouterr().out
    with capsys.disabled():
        print(f"\n{summary}")  # the trial table (states, hosts, folders) for the record: pytest -s
    assert (elsewhere / "lightning_logs" / "sweeps" / "tiny" / "best.yaml").read_text() == best_files[0]
    assert re.search(r"^Parameter importances.* 4 complete trials", summary, re.M)
    assert summary.count(" COMPLETE ") == n_trials and " FAIL " in summary


# ------------------------------------------------------------------------------------------- the SLURM recipe
@pytest.mark.slow
def test_slurm_array_tasks_are_workers_of_one_journal_study(tiny_data, tmp_path):
    submit = tmp_path / "submit"  # where `sbatch` was run: the shared filesystem
    submit.mkdir()
    write_sweep(submit, n_trials=2)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "PYTHON": sys.executable, "PROJECT_DIR": str(PROJECT_ROOT),
           "DATA_DIR": str(tiny_data), "SLURM_SUBMIT_DIR": str(submit), "SLURM_ARRAY_JOB_ID": "4242",
           "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "1",
           "SLURM_JOB_NAME": "mnist-sweep", "SLURM_NTASKS": "1", "SLURM_CPUS_PER_TASK": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)  # no GPU given: the tasks train on CPU
    script = PROJECT_ROOT / "scripts" / "slurm_sweep.sbatch"
    tasks = [subprocess.Popen(["bash", str(script), "tiny.yaml", *fit_args(tiny_data, 1)[2:]], cwd=tmp_path,
                              env=env | {"SLURM_ARRAY_TASK_ID": str(i), "SLURM_JOB_ID": str(4243 + i)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outputs = [task.communicate(timeout=300)[0] for task in tasks]
    finally:
        for task in tasks:
            if task.poll() is None:
                task.kill()
    for task, output in zip(tasks, outputs, strict=True):
        assert task.returncode == 0, output[-3000:]
    sweep_dir = submit / "lightning_logs" / "sweeps" / "tiny"
    study = optuna.load_study(study_name="tiny", storage=reader(f"journal:{sweep_dir / 'journal.log'}"))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2
    for trial in complete:  # each in its task's folder, trained on the CPU
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent.parent.name in ("task-0", "task-1") and run_dir.parent.parent.parent == sweep_dir
        assert yaml.safe_load(trial.user_attrs["config"])["trainer"]["accelerator"] == "cpu"
    assert "task 1 of array 4242" in outputs[1] and "accelerator cpu" in outputs[1]
    assert (sweep_dir / "task-0" / "lightning_logs" / "sweeps" / "tiny" / "best.yaml").is_file()
