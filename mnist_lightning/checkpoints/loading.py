"""Loading a LightningModule from a checkpoint: weights-only, its saved parts checked, its net's shapes compared."""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
import yaml

from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.checkpoints.parts import as_plain, describe, is_plain, part_settings
from mnist_lightning.checkpoints.trust import check_parts, check_saved_parts
from mnist_lightning.errors import CheckpointError


@dataclass(frozen=True)
class CheckedCheckpoint:
    """A checkpoint read once and checked, and the same bytes for Lightning's loader (no second read)."""

    checkpoint: dict[str, Any]
    buffer: io.BytesIO


def load_checked(cls: type[pl.LightningModule], source: str | os.PathLike | IO[bytes],
                 hparams_file: str | os.PathLike | None = None) -> CheckedCheckpoint:
    """Read a checkpoint weights-only and refuse it (and an hparams file) if a saved part names anything but a
    class of the kind its slot in `cls` takes."""
    if isinstance(source, str | os.PathLike):
        checkpoint = load_checkpoint_file(source)
    else:
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    check_saved_parts(checkpoint, cls)
    if hparams_file is not None:
        saved = yaml.safe_load(Path(hparams_file).read_text(encoding="utf-8")) or {}
        check_parts(saved if isinstance(saved, Mapping) else {}, cls, "model")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    buffer.seek(0)
    return CheckedCheckpoint(checkpoint, buffer)


def keep_part_configs(module: pl.LightningModule, checkpoint: Mapping[str, Any], parts: Sequence[str]) -> None:
    """`load_from_checkpoint` rebuilds the parts from their saved configs but passes them in as objects, which
    the module does not keep as hyperparameters: keep the configs, so a checkpoint saved again has them."""
    saved = checkpoint.get("hyper_parameters") or {}
    for key in parts:
        config = as_plain(saved.get(key))  # jsonargparse may have retyped its numbers in place
        if key not in module.hparams and key in saved and is_plain(config):
            module.hparams[key] = config


def check_architecture(module: pl.LightningModule, checkpoint: Mapping[str, Any]) -> None:
    """Refuse, before anything is copied, weights whose shapes differ from the module's, naming the
    checkpoint's net (class path and init args) and this one; torch's own error lists tensors only."""
    own = module.state_dict()
    theirs = checkpoint.get("state_dict", {})
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in theirs.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    missing = sorted(set(k for k in own if k.startswith("net.")) - set(theirs))
    unexpected = sorted(set(k for k in theirs if k.startswith("net.")) - set(own))
    if mismatched or missing or unexpected:
        saved = part_settings(checkpoint.get("hyper_parameters") or {})
        described = ", ".join(f"model.{k}={v!r}" for k, v in saved.items() if k.startswith("net")) or "not recorded"
        net = getattr(module, "net", module)
        raise CheckpointError(
            f"the checkpoint's net ({described}) does not match this model's net ({describe(net)}): "
            + "; ".join(mismatched + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected]))
