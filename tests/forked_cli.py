"""`python -m mnist_lightning ARGS` as a real process that skips the seconds of `import torch, pytorch_lightning`.

For tests whose subject is how a run reacts, as a process, to something from outside: a signal or a
SIGKILL mid-run, its exit code, what it saved before it died. Each command is a process of its own
(its own pid, process group, signal handlers, exit status), forked from a server that has already
imported the project: multiprocessing's forkserver with `set_forkserver_preload`, the standard
library's tool for exactly this. One server per pytest-xdist worker; it ends when the worker does.

What it skips is the interpreter's start and the imports, so tests whose subject is those (import-time
state or warnings, the console of a fresh process, `python -m` itself, a command pasted into a shell,
DDP launches, which start the command again per rank) use `conftest.run_process`.

The child runs the real entry point, `mnist_lightning.__main__.run()`, in `cwd`, with the environment a
`subprocess` of the test would get (`env`), `env`'s PYTHONPATH (and `cwd`, as `python -m` has it) first
on sys.path. Its exit status is the run's: `sys.exit(n)` gives n, an uncaught exception 1 (after the
traceback), a signal -signum. Unlike a fresh interpreter, atexit handlers do not run at its end
(multiprocessing ends a child with os._exit after flushing stdout and stderr and joining its threads);
`tests/test_entry_point.py` checks the real interpreter exit.

This module is imported by the server before it forks, so it imports nothing heavy itself.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# The project's entry point and everything it imports, loaded once in the server (not per command).
PRELOAD = ["mnist_lightning.__main__", __name__]
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _child(args: Sequence[str], cwd: str, environ: dict[str, str], stdout: str, stderr: str) -> None:
    """In the forked process: a session of its own, the given console files, folder and environment, then the
    command."""
    os.setsid()  # as start_new_session=True: the test can kill the command's whole process group
    for fd, path in ((1, stdout), (2, stderr)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(environ)
    extra = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:0] = [cwd, *extra]  # `python -m` puts the working folder first, then PYTHONPATH
    from mnist_lightning import __main__ as entry_point

    sys.argv = [entry_point.__file__, *args]  # what `python -m mnist_lightning ARGS` sets
    entry_point.run()


class ForkedProcess:
    """A started command, with the part of `subprocess.Popen`'s interface the tests use."""

    def __init__(self, args: Sequence[str], cwd: Path, environ: dict[str, str], stdout: Path, stderr: Path) -> None:
        self.args = ["python", "-m", "mnist_lightning", *args]
        self._process = _context.Process(target=_child, args=(list(args), str(cwd), environ, str(stdout), str(stderr)),
                                         name="mnist_lightning")
        self._process.start()
        self.pid: int = self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill(self) -> None:
        self._process.kill()


def start(args: Sequence[str], cwd: Path, environ: dict[str, str], log: Path) -> ForkedProcess:
    """Start the command, stdout and stderr both into `log` (emptied first)."""
    log.write_text("")
    return ForkedProcess(args, cwd, environ, log, log)
