"""Saved parts as plain data: flattened for checks and the HPARAMS row, built-in types for the weights-only loader."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import pytorch_lightning as pl
from torch import nn


def is_plain(value: Any) -> bool:
    """Data a checkpoint can hold and `torch.load(weights_only=True)` can read: no objects, no code.

    Exact types: jsonargparse's range types (`PositiveInt`, ...) are int and float subclasses, which
    the weights-only unpickler refuses.
    """
    if value is None or type(value) in (bool, int, float, str):
        return True
    if type(value) in (list, tuple):
        return all(is_plain(v) for v in value)
    if type(value) is dict:
        return all(type(k) is str and is_plain(v) for k, v in value.items())
    return False


def as_plain(value: Any) -> Any:
    """A copy of configs and numbers as built-in types only (see `is_plain`)."""
    if isinstance(value, bool):
        return bool(value)
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): as_plain(v) for k, v in value.items()}
    return value


def keep_saveable_hparams(module: pl.LightningModule | pl.LightningDataModule, parts: Sequence[str] = ()) -> None:
    """Make `module.hparams` data a weights-only loader reads back: numbers as built-in types (jsonargparse
    passes its range types, `PositiveInt`, `UnitShare`, which are int and float subclasses), and of the
    `parts` only those that arrived as configs (LightningCLI's class path and init args), which
    `load_from_checkpoint` rebuilds. Objects passed in Python cannot be stored safely: pass them again to
    `load_from_checkpoint(path, net=...)`."""
    module.remove_ignored_hparams([key for key in parts if not is_plain(as_plain(module.hparams.get(key)))])
    for key, value in list(module.hparams.items()):
        if is_plain(as_plain(value)):
            module.hparams[key] = as_plain(value)


def part_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """A module's hyperparameters as flat `key: value` pairs, keyed as on the command line.

    An injected part saved by LightningCLI is `{class_path, init_args}`: it becomes `net` (the class
    path) and `net.init_args.width` (each argument), so a resume check or the HPARAMS row can name
    exactly the setting that differs. LightningCLI's own bookkeeping (`_class_path`, ...) is left out.
    """
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and "class_path" in value:
            flat[prefix] = value["class_path"]
            for key, arg in (value.get("init_args") or {}).items():
                walk(f"{prefix}.init_args.{key}", arg)
        elif isinstance(value, Mapping) and value:
            for key, arg in value.items():
                walk(f"{prefix}.{key}", arg)
        else:
            flat[prefix] = list(value) if isinstance(value, tuple) else value

    for key, value in hparams.items():
        if not str(key).startswith("_"):
            walk(str(key), value)
    return flat


def without_init_args(key: str) -> str:
    """A flat key as the user may type it: `net.init_args.width` and `net.width` are the same setting."""
    return ".".join(part for part in key.split(".") if part != "init_args")


def class_path_of(target: Any) -> str:
    """The dotted path of a class or function through the nearest package that exports it, as jsonargparse
    writes it into a config: `mnist_lightning.models.MLP`, not `mnist_lightning.models.mlp.MLP`."""
    module = getattr(target, "__module__", "") or ""
    name = getattr(target, "__qualname__", type(target).__name__)
    parts = module.split(".")
    for length in range(len(parts) - 1, 0, -1):
        parent = sys.modules.get(".".join(parts[:length]))
        if parent is not None and getattr(parent, name, None) is target:
            return f"{parent.__name__}.{name}"
    return f"{module}.{name}".lstrip(".")


def describe(part: Any) -> str:
    """A part passed in Python, by its class (or function) path."""
    if part is None:
        return "none"
    target = part if isinstance(part, type) or callable(part) and not isinstance(part, nn.Module) else type(part)
    if isinstance(target, partial):  # yours, or LightningCLI's (jsonargparse passes the class as an argument)
        target = next((a for a in target.args if isinstance(a, type)), target.func)
    return class_path_of(target)
