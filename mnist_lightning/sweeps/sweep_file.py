"""The sweep file: its fields as jsonargparse reads them, loaded into Optuna's distributions, sampler and pruner.

    configs: [../seed.yaml]
    n_trials: 10
    sampler: {class_path: optuna.samplers.TPESampler, init_args: {seed: 0}}
    pruner: {class_path: optuna.pruners.MedianPruner, init_args: {n_startup_trials: 3, n_warmup_steps: 1}}
    search_space:
      model.optimizer.init_args.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}

docs/experiments.md, "The sweep file", describes every field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser, Namespace
from jsonargparse.typing import Path_fr, PositiveFloat, PositiveInt
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler

from mnist_lightning.errors import UserInputError, first_line
from mnist_lightning.sweeps.heartbeat import Heartbeat
from mnist_lightning.sweeps.sampler import TrialSeededSampler

# A search_space entry's `type` names the Optuna distribution that its other fields are the arguments of.
DISTRIBUTIONS = {"float": FloatDistribution, "int": IntDistribution, "categorical": CategoricalDistribution}
# What a sweep file that leaves out (or nulls) `sampler` or `pruner` gets. Not lazy_instance defaults of the fields:
# jsonargparse carries a default's init args over to another class that the file names (n_warmup_steps to any pruner).
DEFAULT_PARTS = {"sampler": {"class_path": "optuna.samplers.TPESampler", "init_args": {"seed": 0}},
                 "pruner": {"class_path": "optuna.pruners.MedianPruner",
                            "init_args": {"n_startup_trials": 5, "n_warmup_steps": 1}}}
# Lines of jsonargparse's error that repeat what the other lines say (a Union's alternatives, the given value's type).
NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
         "Expected a <class 'NoneType'>")


@dataclass
class SweepFile:
    """The fields of a sweep file: jsonargparse refuses a key, a value or a class path that does not fit them."""

    search_space: dict[str, dict[str, Any]]  # fit option -> {type: float|int|categorical, its distribution's fields}
    configs: list[Path_fr] = field(default_factory=list)  # run configs, relative to the sweep file like an include
    metric: str = "val/acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    n_trials: PositiveInt | None = None
    timeout: PositiveFloat | None = None
    sampler: BaseSampler | None = None  # None: DEFAULT_PARTS["sampler"]
    pruner: BasePruner | None = None  # None: DEFAULT_PARTS["pruner"]; optuna.pruners.NopPruner prunes nothing
    heartbeat: Heartbeat = field(default_factory=Heartbeat)


@dataclass(frozen=True)
class Sweep:
    """A loaded sweep file: its run configs as absolute paths, its search space as Optuna distributions, and its
    sampler (seeded per trial where it has a seed) and pruner built."""

    path: Path
    configs: list[Path]
    search_space: dict[str, BaseDistribution]
    metric: str
    direction: str
    n_trials: int | None
    timeout: float | None
    sampler: BaseSampler
    pruner: BasePruner
    heartbeat: Heartbeat


def fail(path: Path, message: str) -> UserInputError:
    return UserInputError(f"sweep file {path}: {message}")


def one_line(err: Exception) -> str:
    """jsonargparse's error, which spans lines (the key, the class path, each Union alternative), as one line."""
    lines = [line.strip().removeprefix("- ") for line in str(err).splitlines() if line.strip()]
    return " ".join(line for line in lines if not line.startswith(NOISE)) or type(err).__name__


def flow_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=1000).strip()


@cache
def file_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(SweepFile, as_group=False)
    return parser


@cache
def parts_parser() -> ArgumentParser:
    """Builds the sampler and the pruner from their class paths, and each search_space entry's distribution."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--sampler", type=BaseSampler)
    parser.add_argument("--pruner", type=BasePruner)
    for name, kind in DISTRIBUTIONS.items():
        parser.add_argument(f"--{name}", type=kind)
    return parser


def build(path: Path, key: str, spec: Namespace, where: str | None = None) -> Any:
    """The object that `spec` (a class path and its init args, parsed) names; its class's refusal names `where`
    (by default the key and the class path)."""
    try:
        return getattr(parts_parser().instantiate(Namespace(**{key: spec})), key)
    except (ValueError, TypeError) as err:
        raise fail(path, f"{where or f'{key} {spec.class_path}'}: {first_line(err)}") from None


def distribution(path: Path, key: str, entry: dict[str, Any]) -> BaseDistribution:
    """One search_space entry as an Optuna distribution; Optuna checks low, high, step and log itself."""
    fields = dict(entry)
    kind = fields.pop("type", None)
    if kind not in DISTRIBUTIONS:
        raise fail(path, f"search_space {key} needs `type: float|int|categorical` and the fields of Optuna's "
                         f"FloatDistribution, IntDistribution or CategoricalDistribution; got {entry!r}.")
    if kind == "categorical" and isinstance(fields.get("choices"), list):
        # Optuna stores plain values only: a list such as [512, 512] is kept as its JSON text, which is also
        # exactly what the command line accepts.
        fields["choices"] = [json.dumps(c) if isinstance(c, list | dict) else c for c in fields["choices"]]
    try:
        spec = getattr(parts_parser().parse_object({kind: fields}), kind)
    except ArgumentError as err:
        raise fail(path, f"search_space {key}: {one_line(err)}") from None
    return build(path, kind, spec, f"search_space {key}")


def part(parsed: Namespace, key: str) -> Namespace:
    """The sweep file's sampler or pruner (class path and init args), or its default."""
    return parsed.get(key) or getattr(parts_parser().parse_object({key: DEFAULT_PARTS[key]}), key)


def sampler(path: Path, spec: Namespace) -> BaseSampler:
    """The sweep file's sampler; with a seed, a TrialSeededSampler that builds it with `seed + trial number`."""
    seed = spec.init_args.get("seed") if spec.get("init_args") is not None else None
    if seed is None:
        return build(path, "sampler", spec)

    def seeded(trial_seed: int) -> BaseSampler:
        again = spec.clone()
        again.init_args.seed = trial_seed
        return build(path, "sampler", again)

    return TrialSeededSampler(seeded, seed)


def load_sweep(path: Path) -> Sweep:
    """Read a sweep file; every mistake is one UserInputError that names the file and the key."""
    if not path.is_file():
        raise UserInputError(f"sweep file {path} does not exist (the sweeps that ship are in configs/sweeps/).")
    try:
        parsed = file_parser().parse_path(path)
    except ArgumentError as err:
        reason = one_line(err)
        key = next((k for k in DEFAULT_PARTS if reason.startswith(f'Parser key "{k}"')), None)
        example = f" ({key} is a class path with init args, e.g. {flow_yaml(DEFAULT_PARTS[key])})" if key else ""
        raise fail(path, f"{reason}{example}") from None
    if not parsed.search_space:
        raise fail(path, "search_space must map fit options (e.g. model.net.init_args.dropout) to "
                         "{type: float|int|categorical, ...}.")
    return Sweep(
        path=path,
        configs=[Path(config.absolute).resolve() for config in parsed.configs],
        search_space={key: distribution(path, key, entry) for key, entry in parsed.search_space.items()},
        metric=parsed.metric,
        direction=parsed.direction,
        n_trials=parsed.n_trials,
        timeout=parsed.timeout,
        sampler=sampler(path, part(parsed, "sampler")),
        pruner=build(path, "pruner", part(parsed, "pruner")),
        heartbeat=Heartbeat(**parsed.heartbeat.as_dict()),
    )
