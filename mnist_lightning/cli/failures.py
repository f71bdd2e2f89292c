"""What a command raised, as the user's mistake in one line where it is one; the run folder it claimed tidied.

A refused command leaves no run folder behind, and a full disk, an EarlyStopping monitor never logged,
a bad Trainer flag or a class that refused its arguments is one line naming the fix, not Lightning's
or jsonargparse's traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning.callbacks.resume import ResumeCheckpoint, unlogged_monitors
from mnist_lightning.checkpoints.files import checkpoint_files
from mnist_lightning.errors import UserInputError, exception_chain, first_line, found_in_chain, raised_by

DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def after_failure(err: BaseException, run_dir: Path | None, trainer: Any) -> UserInputError | None:
    """Remove the run folder a failed command claimed, unless it holds what must stay; the user's mistake
    behind `err` as one line, or None for a bug."""
    full = next((e for e in exception_chain(err) if isinstance(e, OSError) and e.errno in DISK_FULL), None)
    removed = remove_unused_run_dir(run_dir, trainer, disk_full=full is not None)
    if full is not None:
        return disk_full(full, run_dir, removed)
    denied = next((e for e in exception_chain(err) if isinstance(e, OSError) and e.errno in NOT_WRITABLE), None)
    if denied is not None:
        return not_writable(denied)
    return unlogged_monitor(err, trainer)


def remove_unused_run_dir(run_dir: Path | None, trainer: Any, disk_full: bool) -> bool:
    """A command that stops before its first training step (a refused run), or on a full disk before its
    first checkpoint, leaves no run folder behind: the one it claimed goes, unless it holds a checkpoint.
    A run that trained and then failed otherwise (e.g. its loss diverged) keeps its curves."""
    if run_dir is None or not run_dir.is_dir() or rank_zero_only.rank != 0:
        return False
    trained = trainer is not None and trainer.global_step > 0
    if (trained and not disk_full) or checkpoint_files(run_dir / "checkpoints"):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


def _named_file(err: OSError) -> str:
    """The file an OSError names, as text after a space (TensorBoard's writer names files in bytes), or ''."""
    return f" {os.fsdecode(err.filename)}" if err.filename else ""


def disk_full(err: OSError, run_dir: Path | None, removed: bool) -> UserInputError:
    where = _named_file(err) or (f" the run's files in {run_dir}" if run_dir else "")
    if removed:
        after = f" The unfinished run folder {run_dir} was removed (no checkpoint had been saved)."
    elif run_dir is not None:
        after = f" The run folder {run_dir} and its checkpoints are kept."
    else:
        after = ""
    return UserInputError(f"the disk is full: could not write{where} ({err.strerror}). Free some space and run "
                          f"again.{after}")


def not_writable(err: OSError) -> UserInputError:
    return UserInputError(f"cannot write{_named_file(err)} ({err.strerror}): choose a folder you can write to "
                          "(--trainer.logger.init_args.save_dir, --trainer.default_root_dir, or another working "
                          "folder) or fix its permissions; nothing saved was changed.")


def unlogged_monitor(err: BaseException, trainer: Any) -> UserInputError | None:
    """Lightning's RuntimeError deep inside a fit for an EarlyStopping monitor the run never logs."""
    if not isinstance(err, RuntimeError) or trainer is None or not (missing := unlogged_monitors(trainer)):
        return None
    logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
    last = ResumeCheckpoint.path(trainer)
    saved = f" This epoch is saved: {last}; fix the monitor and resume with --ckpt_path last." if last.exists() else ""
    return UserInputError(f"EarlyStopping monitors {', '.join(missing)}, which this run does not log (it logs "
                          f"{logged}): set its monitor to one of those.{saved}")


def building_failed(err: BaseException) -> UserInputError | None:
    """A class that refused its arguments while LightningCLI built it (jsonargparse wraps what it raised in its
    own ValueError), or a net too large to build, as one line."""
    mistake = found_in_chain(err, UserInputError)
    if mistake is not None:
        return mistake
    missing = found_in_chain(err, ImportError)
    if missing is not None:  # e.g. MLFlowLogger or WandbLogger without its package
        return UserInputError(f"a class of the config needs a package that is not installed ({first_line(missing)}); "
                              "install it, or choose another class.")
    if isinstance(err, MemoryError) or "can't allocate memory" in str(err) or "out of memory" in str(err):
        return UserInputError(f"building the model ran out of memory ({first_line(err)}): the net is larger than "
                              "this machine can hold. Choose a smaller one.")
    return None


def trainer_refused(err: BaseException) -> UserInputError | None:
    """Lightning's own checks of the Trainer's flags (not code it called) as one line."""
    if isinstance(err, MisconfigurationException) or raised_by(err, "pytorch_lightning.", "lightning_fabric."):
        return UserInputError(f"trainer settings: {first_line(err)}")
    return None
