"""Where a sweep's Optuna study lives: the `--storage` of `python -m mnist_lightning sweep`, parsed, checked, opened.

    --storage sqlite:///lightning_logs/sweeps/NAME/study.db   the default: workers on one machine
    --storage journal:/shared/sweeps/NAME.log                 a file on a shared filesystem (NFS), no database
    --storage postgresql+psycopg://user@host/db               a database server (pip install -e ".[postgres]")

SQLite's file locks do not hold on a network filesystem, so a SQLite file on one is refused with the
advice to use the journal. Every storage fails a killed worker's trial once its heartbeat is older
than the sweep's grace period: a database with Optuna's heartbeat, a journal with the project's
(sweeps/heartbeat.py). docs/experiments.md, "Storages", has the recipes.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from mnist_lightning.errors import UserInputError, first_line
from mnist_lightning.sweeps.heartbeat import Heartbeat, JournalHeartbeat, beats_folder

JOURNAL = "journal:"
POSTGRES_EXTRA = 'pip install -e ".[postgres]"'
# Filesystem types (as /proc/mounts names them) whose locks SQLite cannot trust across machines.
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "fuse.ceph", "fuse.cephfs", "glusterfs",
    "fuse.glusterfs", "beegfs", "afs", "ocfs2", "gfs2", "panfs", "pvfs2", "orangefs", "fuse.sshfs", "9p",
})
# Query parameters that can hold a secret (libpq's password, sslpassword; other drivers' passwd, token, key...).
SECRET_KEY = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)
SECRET_QUERY = re.compile(r"((?:pass|pwd|secret|token|key)[^=&]*=)[^&]*", re.IGNORECASE)
FORMS = "sqlite:///PATH, journal:PATH (a shared filesystem) or a database URL such as postgresql+psycopg://user@host/db"


@dataclass(frozen=True)
class StorageSpec:
    """A parsed `--storage`: `kind` is "sqlite", "journal" or "database"; `target` the URL or the journal file."""

    kind: str
    target: str

    @property
    def shown(self) -> str:
        """How to print it: a database URL without its passwords."""
        if self.kind == "journal":
            return f"{JOURNAL}{self.target}"
        return masked_url(sqlalchemy.engine.make_url(self.target))

    def exists(self) -> bool:
        """Whether there can be a study to read (a file storage's file exists); a server is asked later."""
        path = Path(self.target) if self.kind == "journal" else sqlite_path(self.target)
        return path is None or path.is_file()


def masked_url(url: sqlalchemy.engine.URL) -> str:
    """A database URL as it may be printed: the password of its userinfo (SQLAlchemy's own masking) and every
    query parameter that can carry a secret (libpq reads `password` and `sslpassword` there too) as ***."""
    shown = url.set(query={}).render_as_string(hide_password=True)
    if not url.query:
        return shown
    query = {key: "***" if SECRET_KEY.search(key) else value for key, value in url.query.items()}
    return f"{shown}?{urllib.parse.urlencode(query, doseq=True, safe='*')}"


def _masked_text(value: str) -> str:
    """A --storage value that is no URL, as it may be printed: a `user:password@` or `password=` part masked."""
    return SECRET_QUERY.sub(r"\1***", re.sub(r":[^:/@]*@", ":***@", value))


def written_port(value: str) -> str | None:
    """The port as a URL writes it (`host:PORT`), a number or not; None without one."""
    host_port = urllib.parse.urlsplit(value).netloc.rpartition("@")[2]
    _, colon, port = host_port.rpartition(":")
    return port if colon and port and not port.endswith("]") else None  # `[::1]`: an IPv6 address, no port


def check_port(value: str) -> None:
    """A port that is not a number in 1-65535 is a typo that would otherwise surface as SQLAlchemy's ValueError
    (not a number) or as a connection to another port (0 is libpq's default port)."""
    port = written_port(value)
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
        raise UserInputError(f"--storage: the database URL's port {port!r} is not a port number (1-65535): write "
                             "the server's port as digits, e.g. postgresql+psycopg://user@host:5432/db, or leave it "
                             "out for the server's default.")


def parse_storage(value: str | None, default_db: Path) -> StorageSpec:
    """`--storage` as given, or the default SQLite file; a value of none of the three forms is refused."""
    if value is None:
        return StorageSpec("sqlite", f"sqlite:///{default_db.resolve()}")
    if value.startswith(JOURNAL):
        path = value.removeprefix(JOURNAL)
        if not path:
            raise UserInputError(f"--storage {value}: name the journal file after `journal:`, e.g. "
                                 "journal:/shared/sweeps/mnist.log.")
        return StorageSpec("journal", str(Path(path).expanduser().absolute()))
    if "://" in value:
        check_port(value)
    try:
        url = sqlalchemy.engine.make_url(value)
    except sqlalchemy.exc.ArgumentError:
        raise UserInputError(f"--storage takes {FORMS}; got {_masked_text(value)!r}.") from None
    return StorageSpec("sqlite" if url.get_backend_name() == "sqlite" else "database", value)


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (relative to the working folder, as SQLite opens it); None for in-memory."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).expanduser().resolve()


# ----------------------------------------------------------------------------------------- network filesystems
def _unescape(field: str) -> str:
    """A /proc/mounts field: the kernel writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_of(path: Path, mounts: str) -> tuple[str, str] | None:
    """(mount point, filesystem type) of the mount holding `path`: the longest mount point above it, the last
    listed where one is mounted over another."""
    best: tuple[str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point, fstype = _unescape(fields[1]), fields[2]
        if path.is_relative_to(point) and (best is None or len(point) >= len(best[0])):
            best = (point, fstype)
    return best


def network_filesystem(path: Path, mounts: str) -> tuple[str, str] | None:
    """(mount point, type) when `path` is on a network filesystem, else None."""
    found = mount_of(path, mounts)
    return found if found and found[1] in NETWORK_FILESYSTEMS else None


def read_mounts() -> str | None:
    """The mount table, or None where there is none to read (not Linux): the check is then skipped."""
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return None


def refuse_network_sqlite(db: Path, mounts: str | None) -> None:
    """SQLite relies on file locks that NFS, CIFS, Lustre, ... do not keep: concurrent workers would corrupt
    the study. Refuse it there and point at the journal file, which Optuna writes for exactly this case."""
    found = network_filesystem(db, mounts) if mounts else None
    if found:
        point, fstype = found
        raise UserInputError(
            f"the sweep's SQLite file {db} is on a network filesystem ({fstype} at {point}), where SQLite's locks "
            f"do not hold and concurrent workers corrupt the study: use the journal storage there, "
            f"--storage {JOURNAL}{db.with_suffix('.log')}, or a database (docs/experiments.md, \"Storages\").")


def heartbeat_of(spec: StorageSpec, storage: BaseStorage, heartbeat: Heartbeat) -> JournalHeartbeat | None:
    """The journal's heartbeat for the storage `open_storage(spec, ...)` opened; None for the other storages,
    whose heartbeat is RDBStorage's own."""
    if spec.kind != "journal":
        return None
    beats = beats_folder(Path(spec.target))
    try:
        beats.mkdir(exist_ok=True)
    except OSError as err:
        raise UserInputError(f"--storage {spec.shown}: cannot create the heartbeat folder {beats} ({err}).") from None
    return JournalHeartbeat(storage, beats, heartbeat.interval, heartbeat.grace_period)


def _missing_driver(spec: StorageSpec, err: ImportError) -> UserInputError:
    """One line that names the missing database driver and how to install it."""
    err = err.__cause__ if isinstance(err.__cause__, ImportError) else err  # Optuna's wrapper hides the module name
    url = sqlalchemy.engine.make_url(spec.target)
    if url.get_backend_name() == "postgresql":
        driver = "" if url.get_driver_name() == "psycopg" else " and write the URL as postgresql+psycopg://..."
        return UserInputError(f"--storage {spec.shown}: the PostgreSQL driver is not installed ({err}); install it "
                              f"with {POSTGRES_EXTRA}{driver}.")
    return UserInputError(f"--storage {spec.shown}: its database driver is not installed ({err}).")


def open_storage(spec: StorageSpec, heartbeat: Heartbeat, mounts: str | None = None) -> BaseStorage:
    """The Optuna storage for `spec`; `mounts` (default /proc/mounts) for the NFS check. A database gets the
    sweep's heartbeat built in; a journal is Optuna's plain JournalStorage, and its heartbeat is
    `heartbeat_of(spec, storage, heartbeat)`.

    Database errors while connecting or creating the tables (several workers at once) propagate: the
    caller retries them.
    """
    if spec.kind == "journal":
        path = Path(spec.target)
        if not path.parent.is_dir():
            raise UserInputError(f"--storage {spec.shown}: the folder {path.parent} does not exist; create it on "
                                 "the filesystem that every worker shares.")
        try:
            return JournalStorage(JournalFileBackend(str(path)))  # replays the whole journal
        except OSError as err:
            raise UserInputError(f"--storage {spec.shown}: cannot open the journal file ({err}).") from None
        except ValueError as err:  # a record that is not JSON (UTF-8): another file, or damaged
            raise UserInputError(f"--storage {spec.shown}: the file cannot be read as an Optuna journal "
                                 f"({first_line(err)}): it is damaged or another file. Move it aside to start the "
                                 "study again, or give another --storage.") from None
    db = sqlite_path(spec.target)
    if db is not None:
        refuse_network_sqlite(db, read_mounts() if mounts is None else mounts)
    # SQLite: wait for the other workers' locks; a server: test pooled connections idle during a long fit.
    engine_kwargs = {"connect_args": {"timeout": 60}} if spec.kind == "sqlite" else {"pool_pre_ping": True}
    try:
        return RDBStorage(spec.target, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval,
                          grace_period=heartbeat.grace_period)
    except ImportError as err:
        raise _missing_driver(spec, err) from None
    except sqlalchemy.exc.ArgumentError as err:
        raise UserInputError(f"--storage {spec.shown}: {err} (it takes {FORMS}).") from None
