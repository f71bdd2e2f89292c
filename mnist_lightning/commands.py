"""Commands printed for the user to paste: built one way, so each runs as printed.

    print(f"Test it with: {mnist_command('test', '--ckpt_path', path)}")
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path


def python_command() -> str:
    """How to name this interpreter in a command printed for the user, so that it runs when pasted:
    `python` where that is this interpreter (an activated venv), else its path (e.g. `.venv/bin/python`)."""
    found = shutil.which("python")
    if found and os.path.realpath(found) == os.path.realpath(sys.executable):
        return "python"
    executable = Path(sys.executable)
    try:
        return str(executable.relative_to(Path.cwd()))
    except ValueError:
        return str(executable)


def mnist_command(*args: str | os.PathLike[str]) -> str:
    """`<python> -m mnist_lightning ARGS`, quoted for a POSIX shell (paths with spaces, quotes, non-ASCII)."""
    return shlex.join([python_command(), "-m", "mnist_lightning", *(str(a) for a in args)])
