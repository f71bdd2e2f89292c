"""Checks that a checkpoint's saved parts name classes of the kind each slot expects, before anything is built.

A checkpoint written by LightningCLI stores each injected part as plain data, `{class_path, init_args}`,
and rebuilding the module imports and calls that class path with those arguments. Plain data passes the
weights-only unpickler, so without this check a crafted checkpoint could name any callable
(`subprocess.getoutput`, `os.system`) in a slot typed `Callable` and have it run. Here every class path
is resolved and must be a class that the slot's own annotation accepts (`nn.Module` for the net, an
optimizer for `OptimizerCallable`, a scheduler or `RunSchedule` for the schedule, `BatchAugment` for the
augmentation, and the same for a part's own nested parts). The kinds are read from the signatures of the
classes that receive the parts, so a subclass or a user's net declares its own slots. What remains
trusted is importing the module a class path names, as with any config.
"""

from __future__ import annotations

import collections.abc
import importlib
import inspect
import types
import typing
from collections.abc import Mapping
from typing import Any

from mnist_lightning.errors import CheckpointError

# The only function Lightning's `load_from_checkpoint` may import from a checkpoint's `_instantiator`.
TRUSTED_INSTANTIATORS = frozenset(
    {"pytorch_lightning.cli.instantiate_module", "lightning.pytorch.cli.instantiate_module"})


def resolve_class_path(class_path: str) -> Any:
    """The object a dotted class path names, or None when it cannot be imported (import errors are reported
    by whatever builds the part, with their own message)."""
    module_name, _, name = str(class_path).rpartition(".")
    if not module_name:
        return None
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None


def accepted_classes(annotation: Any) -> tuple[type, ...]:
    """The classes a value of this annotation may be built from: a class, the members of a union, the return
    type of a `Callable[..., R]` (a class whose instances are R), the items of a list or tuple."""
    if annotation is None or annotation is type(None):
        return ()
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return (annotation,)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(cls for arg in args for cls in accepted_classes(arg))
    if origin is collections.abc.Callable:
        return accepted_classes(args[-1]) if args else ()
    if origin in (list, tuple, collections.abc.Sequence, collections.abc.Iterable, set, frozenset):
        return tuple(cls for arg in args if arg is not Ellipsis for cls in accepted_classes(arg))
    if origin is typing.Annotated:
        return accepted_classes(args[0])
    return ()


def _slot_annotations(cls: type) -> dict[str, Any]:
    """The annotations of the parameters `cls` is built with, resolved. A subclass whose `__init__` passes
    `**kwargs` on takes its parents' slots too, so the `__init__`s of the whole MRO count, nearest first;
    a parameter whose annotation cannot be resolved is untyped."""
    slots: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        try:
            hints = typing.get_type_hints(init)
            names = inspect.signature(init).parameters
        except Exception:  # an unresolvable forward reference: this class's slots stay untyped
            continue
        for name in names:
            if name in hints:
                slots.setdefault(name, hints[name])
    return slots


def _is_part(value: Any) -> bool:
    return isinstance(value, Mapping) and "class_path" in value


def check_parts(init_args: Mapping[str, Any], receiver: type, where: str) -> None:
    """Refuse, naming the key and the class path, any saved part in `init_args` (the arguments `receiver`
    is built with) that is not a class its slot's annotation accepts; nested parts are checked the same way
    against the class that receives them."""
    slots = _slot_annotations(receiver)
    for key, value in init_args.items():
        if str(key).startswith("_"):
            continue
        values = value if isinstance(value, list | tuple) else [value]
        for item in values:
            if _is_part(item):
                check_part(item, slots.get(str(key)), f"{where}.{key}")


def check_part(part: Mapping[str, Any], annotation: Any, key: str) -> None:
    """One saved `{class_path, init_args}`: its class path must name a class of the slot's kind."""
    class_path = str(part.get("class_path"))
    expected = accepted_classes(annotation)
    target = resolve_class_path(class_path)
    if target is None and not expected:
        raise _refusal(key, class_path, "its slot takes no class path")
    if target is None:
        return  # not importable: building it fails with the import error, and nothing of it runs
    if not isinstance(target, type):
        kind = "function" if callable(target) else type(target).__name__  # os.system is a builtin, still a function
        raise _refusal(key, class_path, f"it is a {kind}, not a class")
    if not expected:
        raise _refusal(key, class_path, "its slot is not typed as a class, so no class path is accepted there")
    if not issubclass(target, expected):
        kinds = " or ".join(f"{c.__module__}.{c.__qualname__}" for c in expected)
        raise _refusal(key, class_path, f"it is not a subclass of {kinds}")
    init_args = part.get("init_args") or {}
    if isinstance(init_args, Mapping):
        check_parts(init_args, target, f"{key}.init_args")


def _refusal(key: str, class_path: str, why: str) -> CheckpointError:
    return CheckpointError(f"the checkpoint's {key} names {class_path}, which is refused: {why}. A checkpoint may "
                           "only name classes of the kind each setting takes; use a checkpoint written by this "
                           "project's `fit`.")


def check_saved_parts(checkpoint: Mapping[str, Any], model_base: type, datamodule_class: type | None = None) -> None:
    """Refuse a checkpoint whose saved model or data settings name anything but classes of the expected kind.

    `model_base`: the class the checkpoint is loaded as; a saved `_class_path` must name it or a subclass.
    `datamodule_class`: the class its `datamodule_hyper_parameters` configure, when they are used.
    """
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams, Mapping):
        raise CheckpointError("the checkpoint's hyper_parameters are not a mapping: not a checkpoint of this project.")
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in TRUSTED_INSTANTIATORS:
        raise _refusal("hyper_parameters._instantiator", str(instantiator), "only LightningCLI's instantiate_module "
                       "may rebuild a module")
    receiver = model_base
    if hparams.get("_class_path") is not None:
        check_part({"class_path": hparams["_class_path"]}, model_base, "model")
        receiver = resolve_class_path(hparams["_class_path"]) or model_base
    check_parts(hparams, receiver, "model")
    data = checkpoint.get("datamodule_hyper_parameters") or {}
    if datamodule_class is not None and isinstance(data, Mapping):
        check_parts(data, datamodule_class, "data")
