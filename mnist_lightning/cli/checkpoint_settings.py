"""What a checkpoint fixes, and the checks that read it: evaluation inherits it, a resume refuses to change it.

The facts are declared once, where they belong:
* the data module's `INPUT_SETTINGS` (what the net's input means), `SPLIT_SETTINGS` (which training
  images are validation images) and `RESUME_SETTINGS` (what else a resumed fit replays: the data
  order and the steps), saved by Lightning as `datamodule_hyper_parameters`;
* every hyperparameter of the model, its injected parts included (`net`, `optimizer`,
  `lr_scheduler` as class path and init args), saved as `hyper_parameters` and compared key by key
  as `part_settings` flattens them (e.g. `model.net.init_args.width`);
* the seed, and `max_epochs` when the schedule spans the run (`MNISTClassifier.on_save_checkpoint`).

A setting counts as given when it differs from the default or is on the command line, so resuming
with only `--ckpt_path` (the rest at the defaults) takes everything from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import Namespace

from mnist_lightning.checkpoints.parts import part_settings, without_init_args
from mnist_lightning.errors import UserInputError

OnCommandLine = Callable[[str], bool]


def mismatch(subcommand: str, key: str, given: Any, saved: Any) -> str:
    """The one-line refusal of a setting that differs from the checkpoint's."""
    if subcommand == "fit":
        return (f"resuming with {key}={given!r}, but the checkpoint was trained with {key}={saved!r}: an exact "
                f"resume keeps it. Drop the option (or pass {saved!r}); to change it, start a new run.")
    return (f"{key}={given!r}, but the checkpoint's run used {key}={saved!r}, which defines its input or its "
            f"validation images. Drop the option to use the run's value.")


def data_settings_from_checkpoint(checkpoint: dict[str, Any], datamodule_class: type, subcommand: str,
                                  given: Namespace, defaults: Namespace, on_command_line: OnCommandLine,
                                  ) -> dict[str, Any]:
    """The data settings to take from the checkpoint; a different explicit value is an error.

    LightningCLI restores only the model's hyperparameters; a model trained with normalised input
    fed unnormalised images, or validated on images it trained on, would silently get worse.
    """
    saved = checkpoint.get("datamodule_hyper_parameters") or {}
    resume = subcommand == "fit"
    keys = (*datamodule_class.INPUT_SETTINGS, *datamodule_class.SPLIT_SETTINGS)
    keys += datamodule_class.RESUME_SETTINGS if resume else ()
    inherited = {}
    for key in keys:
        if key not in saved:
            continue
        value = given.get(key)
        explicit = _flat(key, value) != _flat(key, defaults.get(key)) or on_command_line(f"data.{key}")
        if explicit or resume:
            differs = _first_difference(_flat(key, value), _flat(key, saved[key]))
            if differs is not None:
                raise UserInputError(mismatch(subcommand, f"data.{differs[0]}", differs[1], differs[2]))
        inherited[key] = saved[key]
    data_dir = saved.get("data_dir")
    if data_dir and given.get("data_dir") == defaults.get("data_dir") and Path(data_dir).is_dir():
        inherited["data_dir"] = data_dir  # where the run found its data, while it is still there
    return inherited


def _flat(key: str, value: Any) -> dict[str, Any]:
    """One data setting as flat `key: value` pairs; a class-path setting (`augment`) gives its class
    path and each init arg, whether it comes parsed (a Namespace) or saved (a dict)."""
    return part_settings({key: value.as_dict() if isinstance(value, Namespace) else value})


def _first_difference(given: dict[str, Any], saved: dict[str, Any]) -> tuple[str, Any, Any] | None:
    """The first flat key whose value differs (missing counts as None), with both values."""
    for key in dict.fromkeys([*saved, *given]):
        if given.get(key) != saved.get(key):
            return key, given.get(key), saved.get(key)
    return None


def _model_settings(model: Namespace | None) -> dict[str, Any]:
    if not isinstance(model, Namespace):
        return {}
    init_args = model.get("init_args", model)
    return part_settings(init_args.as_dict() if isinstance(init_args, Namespace) else dict(init_args))


def check_resumed_run(checkpoint: dict[str, Any], given: Namespace, defaults: Namespace,
                      on_command_line: OnCommandLine) -> None:
    """A resume refuses model settings (its parts' included), a schedule's epochs or a seed that differ."""
    saved = part_settings(checkpoint.get("hyper_parameters") or {})
    mine, default = _model_settings(given.get("model")), _model_settings(defaults.get("model"))
    for key, value in saved.items():
        if key not in mine:
            continue
        explicit = mine[key] != default.get(key) or on_command_line(f"model.{key}")
        if mine[key] != value and explicit:
            raise UserInputError(mismatch("fit", f"model.{key}", mine[key], value))
    saved_epochs, epochs = checkpoint.get("max_epochs"), given.trainer.get("max_epochs")
    if checkpoint.get("schedule_spans_run") and saved_epochs is not None and epochs != saved_epochs:
        raise UserInputError(mismatch("fit", "trainer.max_epochs", epochs, saved_epochs)
                             + f" (The schedule spans the run's {saved_epochs} epochs.)")
    saved_seed, seed = checkpoint.get("seed"), given.get("seed_everything")
    if saved_seed is not None and isinstance(seed, int) and not isinstance(seed, bool) and seed != saved_seed:
        raise UserInputError(mismatch("fit", "seed_everything", seed, saved_seed))


def take_settings_from_checkpoint(checkpoint: dict[str, Any], parser: Any, config: Namespace, parsed: Namespace,
                                  subcommand: str, defaults: Namespace, datamodule_class: type,
                                  on_command_line: OnCommandLine) -> Namespace:
    """The config with the data settings the checkpoint fixes taken from it; a resume also checks the model's."""
    given = parsed[subcommand]
    inherited = data_settings_from_checkpoint(checkpoint, datamodule_class, subcommand, given.data, defaults.data,
                                              on_command_line)
    if subcommand == "fit":
        check_resumed_run(checkpoint, given, defaults, on_command_line)
    return parser.parse_object({subcommand: {"data": inherited}}, config) if inherited else config


@dataclass(frozen=True)
class NamedOnCommandLine:
    """Whether `--KEY` is among the command line's options, in any of jsonargparse's spellings (`init_args.`
    written or not). A class, not a closure: ddp_spawn pickles the Trainer, and the CLI with it."""

    given: frozenset[str]

    @classmethod
    def of(cls, argv: list[str]) -> NamedOnCommandLine:
        return cls(frozenset(without_init_args(a[2:].split("=", 1)[0]) for a in argv if a.startswith("--")))

    def __call__(self, key: str) -> bool:
        return without_init_args(key) in self.given
