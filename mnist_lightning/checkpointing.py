"""Checkpoints that are written atomically and loaded safely.

* Save: write `<name>.tmp` in the same folder, fsync, then `os.replace` onto the final name, so a
  crash or a full disk never leaves a half-written file where a good checkpoint was. A failed save
  raises (never a warning), so a run cannot go on believing it is protected.
* Load: `torch.load(weights_only=True)`, so a checkpoint carrying a pickle payload cannot run code;
  a truncated or corrupt file gets an error that names it.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mnist_lightning.errors import CheckpointError


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu", allow_bare_state_dict: bool = False) -> dict[str, Any]:
    """Read a checkpoint with `weights_only=True`; every failure becomes a CheckpointError naming the file.

    `allow_bare_state_dict`: also accept a plain {name: tensor} dict, which is how Lightning's
    ddp_spawn hands the trained weights back from the workers to the main process.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist (or is not a file).")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err) or "GLOBAL" in str(err):  # the weights-only unpickler said no
            raise CheckpointError(
                f"refusing to load {path}: it holds Python objects beyond tensors and plain data, which could run "
                f"code when unpickled. Only load checkpoints written by this project. ({str(err).splitlines()[0]})"
            ) from None
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({str(err).splitlines()[0]}).") from None
    except Exception as err:  # zip, EOF, key and OS errors: all mean an unreadable file
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt ({str(err).splitlines()[0]}); "
            "use another checkpoint of the run (e.g. last.ckpt or the best one)."
        ) from None
    bare = allow_bare_state_dict and isinstance(checkpoint, dict) and all(isinstance(v, torch.Tensor) for v in checkpoint.values())
    if not isinstance(checkpoint, dict) or ("state_dict" not in checkpoint and not bare):
        raise CheckpointError(f"{path} is not a Lightning checkpoint of this project (no 'state_dict').")
    return checkpoint


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with write-then-rename saves and weights-only loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)  # serialise fully before touching the disk
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(buffer.getbuffer())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise CheckpointError(f"could not write checkpoint {path}: {err}. Free space or fix the folder's permissions.") from err

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        # Lightning also loads its ddp_spawn hand-back (a bare state_dict, `.temp.ckpt`) through here.
        return load_checkpoint_file(path, map_location=map_location or "cpu", allow_bare_state_dict=True)
