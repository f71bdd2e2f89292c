"""Files written all or nothing: a crash or a full disk never leaves half a file where a good one was."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mnist_lightning.errors import CheckpointError, first_line


def write_atomically(path: Path, write: Callable[[IO[bytes]], None], what: str = "file") -> None:
    """Write `path` through `write(f)` into `<path>.<pid>.tmp`, fsync, then rename: all or nothing."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):  # e.g. a read-only folder: the write's own error is the one to report
            tmp.unlink(missing_ok=True)
        advice = {errno.ENOSPC: " Free some space and run again.", errno.EDQUOT: " Free some space and run again.",
                  errno.EACCES: " Fix the folder's permissions or choose another path.",
                  errno.EPERM: " Fix the folder's permissions or choose another path.",
                  errno.EROFS: " The file system is read-only: choose another path."}.get(err.errno, "")
        raise CheckpointError(f"could not write {what} {path}: {err.strerror or first_line(err)}.{advice}") from err
