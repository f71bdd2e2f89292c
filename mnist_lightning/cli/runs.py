"""Run folders: each `fit` claims `lightning_logs/version_N/` of its own, and its checkpoints stay in it.

* `claim_run_dir`: a new `version_N` folder claimed atomically, so runs started at the same moment
  never share one.
* `RunConfigSaver`: the resolved config beside the run's logs, with the run's version filled in,
  so `fit --config <run>/config.yaml --ckpt_path last` resumes into the same folder.
* `resolve_ckpt_path`: `--ckpt_path last`/`best` found in the config's own run folder.
* `run_of_checkpoint`: which run a checkpoint belongs to, so evaluation logs into that run.
* `claim_run_dir_without_logger`: with `--trainer.logger false` the run's folder is the trainer's
  `default_root_dir`, a `version_N` claimed the same way (not the working folder).
* `logger_of_run`, `reopen_run`, `keep_csv_rows`: an evaluation of a run's checkpoint logs with the run's
  own logger into the run's folder, and a CSV run reopened keeps the rows of its `metrics.csv`.
"""

from __future__ import annotations

import importlib
import shlex
import tempfile
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only

from mnist_lightning.checkpoints.files import LAST_CHECKPOINT, checkpoint_files
from mnist_lightning.errors import UserInputError

RUN_PREFIX = "version_"
NO_LOGGER_ROOT = "lightning_logs"  # where runs without a logger get their folders (default_root_dir unset)
# The loggers that keep a run in `<save_dir>/<name>/version_N/`: the folder the run's checkpoints go to.
VERSIONED_LOGGERS = (TensorBoardLogger, CSVLogger)
# Lightning's CSVLogger, but keeping a reopened run's rows.
KEEPS_CSV_ROWS = "mnist_lightning.loggers.AppendingCSVLogger"
NOT_SAVED = object()  # logger_of_run: the folder holds no saved config (a saved logger may be false or null)
FRESH_START = "Start a new run with the same settings by adding --trainer.logger.init_args.version null."


def fresh_start(config: Namespace) -> str:
    """How to start a new run with the same settings, as a sentence: the option depends on where the runs go."""
    if not has_no_logger(config):
        return FRESH_START
    run_dir = config.trainer.get("default_root_dir")
    root = Path(run_dir).parent if run_dir else Path(NO_LOGGER_ROOT)
    return f"Start a new run with the same settings by adding --trainer.default_root_dir {shlex.quote(str(root))}."


def has_no_logger(config: Namespace) -> bool:
    """`--trainer.logger false`: the run's folder is then the trainer's default_root_dir."""
    return config.get("trainer", Namespace()).get("logger") in (False, [])


def run_dir_of_checkpoint(ckpt_path: str) -> Path | None:
    """The run folder of a checkpoint in `<run>/checkpoints/`, whatever the logger (or none)."""
    path = Path(ckpt_path)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def claim_run_dir_without_logger(default_root_dir: str | None) -> Path:
    """A new `version_N` under default_root_dir (`lightning_logs` when unset) for a run without a logger.

    Its checkpoints and configs go there (the trainer's default_root_dir becomes the run's folder, and
    the saved config records it, so `fit --config <run>/config.yaml --ckpt_path last` resumes into it).
    A default_root_dir that is itself a run's folder (the saved config of an earlier run) is refused.
    """
    root = Path(default_root_dir or NO_LOGGER_ROOT)
    if (root / "config.yaml").is_file() or checkpoint_files(root / "checkpoints"):
        raise UserInputError(
            f"{root} holds an earlier run; nothing was changed. Resume it with --ckpt_path last, or start a new run "
            f"with the same settings by adding --trainer.default_root_dir {shlex.quote(str(root.parent))}.")
    return root / f"{RUN_PREFIX}{claim_run_dir(root)}"


def logger_namespaces(config: Namespace) -> list[Namespace]:
    """The entries of a parsed subcommand config's logger(s) that keep the run in a `version_N` folder
    (TensorBoardLogger, CSVLogger, or subclasses), in order."""
    loggers = config.get("trainer", Namespace()).get("logger")
    loggers = loggers if isinstance(loggers, list) else [loggers]
    return [logger for logger in loggers if isinstance(logger, Namespace)
            and isinstance(cls := _logger_class(str(logger.get("class_path", ""))), type)
            and issubclass(cls, VERSIONED_LOGGERS)]


def logger_namespace(config: Namespace) -> Namespace | None:
    """The first of `logger_namespaces`, which names the run's folder, or None."""
    return next(iter(logger_namespaces(config)), None)


def _logger_class(class_path: str) -> Any:
    """The class a parsed config's class path names (jsonargparse has imported it already), or None."""
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def logger_of_run(run_dir: Path) -> Any:
    """The `trainer.logger` setting the run saved in its config.yaml (class path and init args, or false),
    or `NOT_SAVED` when the folder holds no saved config of this project."""
    try:
        saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return NOT_SAVED
    trainer = saved.get("trainer") if isinstance(saved, dict) else None
    return trainer["logger"] if isinstance(trainer, dict) and "logger" in trainer else NOT_SAVED


def version_of(run_dir: Path) -> int | str:
    """A logger's `version` for a run folder: N for `version_N`, else the folder's own name."""
    number = run_dir.name.removeprefix(RUN_PREFIX)
    return int(number) if run_dir.name.startswith(RUN_PREFIX) and number.isdigit() else run_dir.name


def reopen_run(logger: Namespace, run_dir: Path) -> None:
    """Point a versioned logger at an existing run folder (wherever the command runs from)."""
    logger.init_args.save_dir = str(run_dir.parent)
    logger.init_args.name = ""
    logger.init_args.version = version_of(run_dir)


def keep_csv_rows(logger: Namespace) -> None:
    """Lightning's own CSVLogger deletes the metrics.csv of a run it reopens (a resume, or an evaluation
    added to the run): this project's subclass takes its place then, keeping the rows, and says so."""
    folder = run_folder(logger)
    if folder is None or _logger_class(str(logger.class_path)) is not CSVLogger:
        return
    metrics = folder / "metrics.csv"
    if metrics.is_file():
        logger.class_path = KEEPS_CSV_ROWS
        rank_zero_info(f"Logging with {KEEPS_CSV_ROWS}, which adds to {metrics} (Lightning's CSVLogger would delete "
                       "its rows).")


def run_folder(logger: Namespace) -> Path | None:
    """The existing run folder a logger with a set version writes into, or None."""
    version = logger.init_args.get("version")
    if version is None:
        return None
    folder = runs_root(logger) / (version if isinstance(version, str) else f"{RUN_PREFIX}{version}")
    return folder if folder.is_dir() else None


def refuse_unwritable(folder: Path) -> None:
    """An existing run folder the command would write into, tried before any logger opens a file there: a
    logger's background writer thread would otherwise die on it with a traceback of its own."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from err


def runs_root(logger: Namespace) -> Path:
    """The folder that holds the logger's `version_N` runs."""
    return Path(logger.init_args.get("save_dir") or "lightning_logs") / (logger.init_args.get("name") or "")


def run_of_checkpoint(ckpt_path: str, logger: Namespace | None) -> int | str | None:
    """The run's version when the checkpoint lies in `<logs>/version_N/checkpoints/` of this config's logger."""
    if logger is None:
        return None
    run_dir = run_dir_of_checkpoint(str(Path(ckpt_path).resolve()))
    if run_dir is not None and run_dir.parent == runs_root(logger).resolve():
        return version_of(run_dir)
    return None


def claim_run_dir(root: Path) -> int:
    """Create the next free `version_N` under `root` with one atomic mkdir and return N.

    TensorBoardLogger picks the next number by listing the folder, so two runs started together
    pick the same one; `mkdir` succeeds for exactly one of them, and the other takes the next.
    """
    root.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name[len(RUN_PREFIX):]) for p in root.iterdir() if p.name.startswith(RUN_PREFIX)
             and p.name[len(RUN_PREFIX):].isdigit()]
    n = max(taken, default=-1) + 1
    while True:
        try:
            (root / f"{RUN_PREFIX}{n}").mkdir()
            return n
        except FileExistsError:
            n += 1



def resolve_ckpt_path(subcommand: str, config: Namespace) -> str | None:
    """`last`/`best` in the config's run folder; validate/test/predict without one only when asked for."""
    ckpt_path = config.get("ckpt_path")
    if subcommand == "fit" and ckpt_path in (None, "hpc"):
        return ckpt_path
    if not ckpt_path:
        if config.get("allow_untrained"):
            return None
        raise UserInputError(
            f"{subcommand} needs a trained net: pass --ckpt_path lightning_logs/version_N/checkpoints/last.ckpt "
            "(or the best checkpoint that fit printed); --allow_untrained true runs an untrained one."
        )
    if ckpt_path not in ("last", "best"):
        return ckpt_path
    logger = logger_namespace(config)
    version = logger.init_args.get("version") if logger is not None else None
    # see claim_run_dir_without_logger
    run_dir = config.trainer.get("default_root_dir") if has_no_logger(config) else None
    if version is None and run_dir is None:
        raise UserInputError(
            f"--ckpt_path {ckpt_path}: nothing to resume or evaluate without the run it belongs to. Pass the run's "
            f"own config (--config lightning_logs/version_N/config.yaml --ckpt_path {ckpt_path}) or a checkpoint file."
        )
    if run_dir is not None:
        folder = Path(run_dir) / "checkpoints"
    else:
        folder = runs_root(logger) / (version if isinstance(version, str) else f"{RUN_PREFIX}{version}") / "checkpoints"
    files = checkpoint_files(folder)
    found = [p for p in files if (p.name == LAST_CHECKPOINT) == (ckpt_path == "last")]
    if not found:
        stopped = " (the run stopped before its first checkpoint)" if not files else ""
        advice = f" {fresh_start(config)}" if subcommand == "fit" else ""
        raise UserInputError(f"--ckpt_path {ckpt_path}: nothing to {'resume' if subcommand == 'fit' else subcommand}, "
                             f"no {ckpt_path} checkpoint in {folder}{stopped}"
                             f"{': it holds ' + ', '.join(p.name for p in files) if files else ''}.{advice}")
    return str(found[-1])


def refuse_earlier_run(checkpoints: Path, run_dir: Path) -> None:
    """A new fit must not write into a folder that holds another run's checkpoints or curves."""
    if checkpoint_files(checkpoints):
        raise UserInputError(f"{checkpoints} already holds checkpoints of an earlier run; nothing was changed. Resume "
                             f"it with --ckpt_path last, or {FRESH_START[0].lower()}{FRESH_START[1:]}")
    if run_dir.is_dir() and any(p.name.startswith("events.out") or p.name == "metrics.csv" for p in run_dir.iterdir()):
        raise UserInputError(f"{run_dir} holds an earlier run that stopped before its first checkpoint: nothing to "
                             f"resume, and nothing was changed. {FRESH_START}")


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config beside the run's logs, with the run's version filled in.

    With the version recorded, `fit --config <run>/config.yaml --ckpt_path last` resumes into the
    same folder, so the curves continue as one. A resume adds `config.resume-N.yaml` and an
    evaluation `config.test-N.yaml` (or validate) instead of overwriting the run's own.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: Any) -> None:
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        if self.already_saved or stage == "predict":
            return
        if isinstance(trainer.logger, VERSIONED_LOGGERS):
            logger_config = logger_namespace(self.config)
            if logger_config is not None:
                logger_config.init_args.version = trainer.logger.version
        log_dir = Path(trainer.log_dir)
        name, n = "config.yaml", 0
        while trainer.is_global_zero and (log_dir / name).exists():
            n += 1
            name = f"config.{stage}-{n}.yaml" if stage != "fit" else f"config.resume-{n}.yaml"
        self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


def choose_run_folder(cli: Any) -> None:
    """Before the classes exist: the run folder this command logs into, set in `cli.config`.

    A new `fit` claims a new `version_N` (recorded in `cli.claimed_run_dir`); a resume and an evaluation of a
    run's checkpoint log into that run's folder, with the run's own logger (as its config.yaml saved it)
    unless `--trainer.logger` is given; `predict` writes no run.
    """
    subcommand = cli.subcommand
    config = cli.config[subcommand]
    if subcommand == "predict":
        config.trainer.logger = False  # predictions go to the console and --predictions_csv, not to a run
    if subcommand in ("validate", "test") and config.get("ckpt_path") and not _logger_given(cli.on_command_line):
        _log_with_the_runs_logger(cli, config.ckpt_path)
        config = cli.config[subcommand]
    writes_logs = not config.trainer.get("fast_dev_run")  # fast_dev_run writes nothing
    if has_no_logger(config) and subcommand != "predict":
        _run_dir_without_logger(cli, config, writes_logs)
        return
    loggers = logger_namespaces(config)
    if not loggers:
        return
    logger = loggers[0]  # names the run's folder; every other versioned logger writes into the same version
    if logger.init_args.get("version") is None and subcommand != "fit" and config.get("ckpt_path"):
        logger.init_args.version = run_of_checkpoint(config.ckpt_path, logger)  # evaluate into its run
    if logger.init_args.get("version") is None and writes_logs and rank_zero_only.rank == 0:
        logger.init_args.version = claim_run_dir(runs_root(logger))
        cli.claimed_run_dir = runs_root(logger) / f"{RUN_PREFIX}{logger.init_args.version}"
    for other in loggers[1:]:
        if other.init_args.get("version") is None:
            other.init_args.version = logger.init_args.get("version")
    if subcommand != "fit" or config.get("ckpt_path"):
        for each in loggers:
            keep_csv_rows(each)  # a run reopened: a resume, or an evaluation added to it
        reopened = {run_folder(each) for each in loggers} - {None} if writes_logs else set()
        for folder in reopened:
            refuse_unwritable(folder)


def _logger_given(on_command_line: Any) -> bool:
    """`--trainer.logger` (or one of its init args) named on the command line: the user's choice wins."""
    return any(key == "trainer.logger" or key.startswith("trainer.logger.") for key in on_command_line.given)


def _log_with_the_runs_logger(cli: Any, ckpt_path: str) -> None:
    """An evaluation of a run's checkpoint logs with the run's own logger (as its config.yaml saved it) into
    the run's folder: a CSV run gets rows in its metrics.csv, not a TensorBoard event file."""
    run_dir = run_dir_of_checkpoint(ckpt_path)
    saved = logger_of_run(run_dir) if run_dir is not None else NOT_SAVED
    if saved is NOT_SAVED:
        return
    cli.config = cli.parser.parse_object({cli.subcommand: {"trainer": {"logger": saved}}}, cli.config)
    if run_dir is not None:
        for logger in logger_namespaces(cli.config[cli.subcommand]):
            reopen_run(logger, run_dir)


def _run_dir_without_logger(cli: Any, config: Namespace, writes_logs: bool) -> None:
    """Without a logger the run's folder is the trainer's default_root_dir (Lightning puts checkpoints and
    the saved config there): a new `version_N` for a new fit, the checkpoint's own run otherwise."""
    trainer = config.trainer
    ckpt_path = config.get("ckpt_path")
    if cli.subcommand == "fit" and ckpt_path is None:
        if writes_logs and rank_zero_only.rank == 0:
            cli.claimed_run_dir = claim_run_dir_without_logger(trainer.get("default_root_dir"))
            trainer.default_root_dir = str(cli.claimed_run_dir)
        return
    if trainer.get("default_root_dir") is not None:  # given, e.g. by the run's own saved config
        return
    run_dir = run_dir_of_checkpoint(ckpt_path) if ckpt_path not in (None, "hpc") else None
    if run_dir is not None:
        if writes_logs:
            refuse_unwritable(run_dir)
        trainer.default_root_dir = str(run_dir)
    elif cli.subcommand != "fit":
        cli.save_config_callback = None  # an evaluation outside any run writes nothing (not ./config.yaml)
