"""Checkpoint files: read weights-only with one-line errors, written all or nothing, tidied before a resume."""

from __future__ import annotations

import io
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mnist_lightning.atomic import write_atomically
from mnist_lightning.errors import CheckpointError, first_line

LAST_CHECKPOINT = "last.ckpt"


def load_checkpoint_file(
    path: str | os.PathLike, map_location: Any = "cpu", allow_bare_state_dict: bool = False
) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; every failure becomes a CheckpointError naming the file.

    `allow_bare_state_dict`: also accept a plain {name: tensor} dict, which is how Lightning's
    ddp_spawn hands the trained weights back from the workers to the main process.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"checkpoint {path} is a folder: pass a .ckpt file inside it (e.g. {path / LAST_CHECKPOINT}).")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file).")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was never written; use another checkpoint "
                              "of the run (e.g. last.ckpt or the best one).")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):  # the weights-only unpickler said no
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects beyond tensors and plain data, which could run "
                f"code when unpickled. Only load checkpoints written by this project. ({first_line(err)})"
            ) from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first_line(err)}).") from None
    except PermissionError as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err.strerror}. Fix its permissions.") from None
    except Exception as err:  # zip, EOF, key and OS errors: all mean an unreadable file
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({first_line(err)}); "
            "use another checkpoint of the run (e.g. last.ckpt or the best one)."
        ) from None
    tensors_only = isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    bare = allow_bare_state_dict and tensors_only
    if bare:
        return checkpoint
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict) \
            or "pytorch-lightning_version" not in checkpoint or not checkpoint["state_dict"]:
        raise CheckpointError(f"{path} is not a checkpoint written by this project's `fit` (no Lightning version "
                              "or weights in it).")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with write-then-rename saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise fully before touching the disk
        write_atomically(Path(path), lambda f: f.write(buffer.getbuffer()), what="checkpoint")

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Lightning also loads its ddp_spawn hand-back (a bare state_dict, `.temp.ckpt`) through here.
        return load_checkpoint_file(path, map_location=map_location or "cpu", allow_bare_state_dict=True)


def checkpoint_files(folder: Path) -> list[Path]:
    """The checkpoints in a folder: `*.ckpt` files, never the temporary files of an unfinished write."""
    return sorted(p for p in folder.glob("*.ckpt") if p.is_file()) if folder.is_dir() else []


def remove_superseded_checkpoints(folder: Path, checkpoint: dict[str, Any]) -> list[Path]:
    """Before a resume: delete what the interrupted part of the run wrote after `checkpoint` was saved.

    A run killed after ModelCheckpoint saved a new best but before `last.ckpt` caught up leaves a
    best file that the resumed ModelCheckpoint does not know, and keeps forever beside the next
    (two "best" files with save_top_k=1). The resume redoes that work. Also removes the temporary
    files of writes that a killed process never finished.
    """
    known = {LAST_CHECKPOINT}
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict):
            known |= {Path(p).name for p in (state.get("best_k_models") or {})}
            known |= {Path(p).name for p in (state.get("best_model_path"), state.get("last_model_path")) if p}
    removed = [p for p in checkpoint_files(folder) if p.name not in known]
    removed += [p for p in folder.glob("*.tmp") if not _pid_alive(p)] if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
        print(f"removed {path}: written after the checkpoint this run resumes from", file=sys.stderr)
    return removed


def _pid_alive(tmp: Path) -> bool:
    """Whether the process that is writing `<name>.<pid>.tmp` still runs."""
    pid = tmp.suffixes[-2].lstrip(".") if len(tmp.suffixes) >= 2 else ""
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
