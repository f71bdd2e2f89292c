"""Run folders: each `fit` claims `lightning_logs/version_N/` of its own, and its checkpoints stay in it.

* `claim_run_dir`: a new `version_N` folder claimed atomically, so runs started at the same moment
  never share one.
* `RunConfigSaver`: the resolved config beside the run's logs, with the run's version filled in,
  so `fit --config <run>/config.yaml --ckpt_path last` resumes into the same folder.
* `resolve_ckpt_path`: `--ckpt_path last`/`best` found in the config's own run folder.
* `run_of_checkpoint`: which run a checkpoint belongs to, so evaluation logs into that run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger

from mnist_lightning.errors import UserInputError
from mnist_lightning.resume import LAST_CHECKPOINT, checkpoint_files

RUN_PREFIX = "version_"
FRESH_START = "Start a new run with the same settings by adding --trainer.logger.init_args.version null."


def logger_namespace(config: Namespace) -> Namespace | None:
    """The TensorBoardLogger entry of a parsed subcommand config, or None."""
    logger = config.get("trainer", Namespace()).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return logger
    return None


def runs_root(logger: Namespace) -> Path:
    """The folder that holds the logger's `version_N` runs."""
    return Path(logger.init_args.get("save_dir") or "lightning_logs") / (logger.init_args.get("name") or "")


def run_of_checkpoint(ckpt_path: str, logger: Namespace | None) -> int | str | None:
    """The run's version when the checkpoint lies in `<logs>/version_N/checkpoints/` of this config's logger."""
    if logger is None:
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == runs_root(logger).resolve():
        name = path.parent.parent.name
        number = name.removeprefix(RUN_PREFIX)
        return int(number) if name.startswith(RUN_PREFIX) and number.isdigit() else name
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
    if version is None:
        raise UserInputError(
            f"--ckpt_path {ckpt_path}: nothing to resume or evaluate without the run it belongs to. Pass the run's "
            f"own config (--config lightning_logs/version_N/config.yaml --ckpt_path {ckpt_path}) or a checkpoint file."
        )
    folder = runs_root(logger) / (version if isinstance(version, str) else f"{RUN_PREFIX}{version}") / "checkpoints"
    files = checkpoint_files(folder)
    found = [p for p in files if (p.name == LAST_CHECKPOINT) == (ckpt_path == "last")]
    if not found:
        stopped = " (the run stopped before its first checkpoint)" if not files else ""
        advice = f" {FRESH_START}" if subcommand == "fit" else ""
        raise UserInputError(f"--ckpt_path {ckpt_path}: nothing to {'resume' if subcommand == 'fit' else subcommand}, "
                             f"no {ckpt_path} checkpoint in {folder}{stopped}"
                             f"{': it holds ' + ', '.join(p.name for p in files) if files else ''}.{advice}")
    return str(found[-1])


def refuse_earlier_run(checkpoints: Path, run_dir: Path) -> None:
    """A new fit must not write into a folder that holds another run's checkpoints or curves."""
    if checkpoint_files(checkpoints):
        raise UserInputError(f"{checkpoints} already holds checkpoints of an earlier run; nothing was changed. Resume "
                             f"it with --ckpt_path last, or {FRESH_START[0].lower()}{FRESH_START[1:]}")
    if run_dir.is_dir() and any(p.name.startswith("events.out") for p in run_dir.iterdir()):
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
        if isinstance(trainer.logger, TensorBoardLogger):
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
