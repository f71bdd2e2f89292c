"""The command line: LightningCLI with this project's model, data, configs and safety rails.

    python -m mnist_lightning fit                                  # configs/default.yaml
    python -m mnist_lightning fit --config configs/seed.yaml       # the tutorial, exactly
    python -m mnist_lightning test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python -m mnist_lightning fit --config lightning_logs/version_0/config.yaml --ckpt_path last
"""

from __future__ import annotations

import atexit
import contextvars
import gc
import os
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning.callbacks import LAST_CHECKPOINT, ResumeCheckpoint, TrainingDiverged
from mnist_lightning.callbacks import checkpoint_dir as checkpoint_dir_of
from mnist_lightning.checkpointing import SafeCheckpointIO, load_checkpoint_file
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import UserInputError
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.prediction import PredictionTable

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
PROGRESS_BAR_REFRESH_STEPS = 50
# Data settings that define what the model's input means; they travel with the checkpoint.
INPUT_SETTINGS = ("dataset", "normalize")


def _logger_namespace(config: Namespace) -> Namespace | None:
    """The TensorBoardLogger entry of a parsed config, or None."""
    logger = config.get("trainer", Namespace()).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return logger
    return None


class RunConfigSaver(SaveConfigCallback):
    """Saves the resolved config beside the run's logs, with the run's version filled in.

    With the version recorded, `fit --config <run>/config.yaml --ckpt_path last` resumes into the
    same folder, so the curves continue as one. A resumed run keeps the first config and adds
    `config.resume-N.yaml` instead of colliding with it.
    """

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.already_saved:
            return
        if isinstance(trainer.logger, TensorBoardLogger):
            logger_config = _logger_namespace(self.config)
            if logger_config is not None:
                logger_config.init_args.version = trainer.logger.version
        log_dir = Path(trainer.log_dir)
        name, n = "config.yaml", 0
        while trainer.is_global_zero and (log_dir / name).exists():
            n += 1
            name = f"config.{stage}-{n}.yaml" if stage != "fit" else f"config.resume-{n}.yaml"
        self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)


class MNISTLightningCLI(LightningCLI):
    """LightningCLI for MNISTClassifier + MNISTDataModule, with this project's rails.

    configs/default.yaml under every subcommand; checkpoints written atomically and loaded
    weights-only (SafeCheckpointIO); ResumeCheckpoint always on; `--ckpt_path last` resolved in the
    run's own folder; input settings inherited from checkpoints; `--torch_threads`.
    """

    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        default_files = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
        super().__init__(
            MNISTClassifier,
            MNISTDataModule,
            save_config_callback=RunConfigSaver,
            parser_kwargs={sub: {"default_config_files": default_files} for sub in ("fit", "validate", "test", "predict")},
            trainer_defaults={"callbacks": [ResumeCheckpoint()]},
            args=args,
            run=run,
        )

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument(
            "--torch_threads",
            type=int | None,
            default=None,
            help="CPU threads for torch ops (torch.set_num_threads); None keeps torch's default. "
            "1 is fastest for small nets on a small CPU, where thread hand-offs cost more than the math.",
        )
        parser.add_argument(
            "--predictions_csv",
            type=str | None,
            default=None,
            help="predict only: also write the predictions table to this CSV file (file,prediction,probability).",
        )

    # ------------------------------------------------------------------- predict: the table
    def before_predict(self) -> None:
        """Every predict prints its table (mnist_lightning.prediction); `--predictions_csv` also saves it."""
        if not any(isinstance(c, PredictionTable) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionTable(csv_path=self.config[self.subcommand].get("predictions_csv")))

    # ------------------------------------------------------------------- checkpoints from the CLI
    def _parse_ckpt_path(self) -> None:
        """Read hyperparameters from `--ckpt_path`, with a clear error for a bad or unsafe file."""
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        checkpoint = None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            checkpoint = load_checkpoint_file(ckpt_path)  # raises CheckpointError naming the file
        super()._parse_ckpt_path()
        if checkpoint is not None:
            self._inherit_input_settings(subcommand, checkpoint)

    def _inherit_input_settings(self, subcommand: str, checkpoint: dict[str, Any]) -> None:
        """Take the dataset and normalisation from the checkpoint, as its model was trained on them.

        LightningCLI restores only the model's hyperparameters; a model trained with normalised input
        fed unnormalised images would silently get worse.
        """
        saved = checkpoint.get("datamodule_hyper_parameters") or {}
        inherited = {key: saved[key] for key in INPUT_SETTINGS if key in saved}
        if inherited:
            self.config = self.parser.parse_object({subcommand: {"data": inherited}}, self.config)

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("torch_threads")
        if threads is not None:
            if threads < 1:
                raise UserInputError(f"torch_threads must be >= 1; got {threads}.")
            torch.set_num_threads(threads)
        if self.subcommand == "fit":
            self._resume_into_run_folder(config)

    def _resume_into_run_folder(self, config: Namespace) -> None:
        """A checkpoint inside `<logs>/version_N/checkpoints/` resumes into version_N."""
        ckpt_path, logger = config.get("ckpt_path"), _logger_namespace(config)
        if not ckpt_path or ckpt_path in ("last", "best", "hpc") or logger is None:
            return
        if logger.init_args.get("version") is None:
            run_dir = Path(ckpt_path).resolve().parent.parent
            root = Path(logger.init_args.get("save_dir", "lightning_logs")).resolve() / (logger.init_args.get("name") or "")
            if Path(ckpt_path).resolve().parent.name == "checkpoints" and run_dir.parent == root.resolve():
                logger.init_args.version = run_dir.name

    def before_fit(self) -> None:
        config = self.config_init[self.subcommand]
        ckpt_path = config.get("ckpt_path")
        checkpoint_dir = checkpoint_dir_of(self.trainer)  # known before fit starts
        if ckpt_path == "last":
            last = checkpoint_dir / LAST_CHECKPOINT
            if not last.is_file():
                raise UserInputError(
                    f"--ckpt_path last: nothing to resume, no last.ckpt in {checkpoint_dir}. Pass the run's own "
                    "config (--config lightning_logs/version_N/config.yaml) or a checkpoint path."
                )
            config.ckpt_path = str(last)
        elif not ckpt_path and checkpoint_dir.is_dir() and any(checkpoint_dir.iterdir()):
            raise UserInputError(
                f"{checkpoint_dir} already holds checkpoints of an earlier run; nothing was changed. Resume it with "
                "--ckpt_path last, or start a new run with --trainer.logger.init_args.version null."
            )

    def after_fit(self) -> None:
        callback = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or not isinstance(callback, ModelCheckpoint) or not callback.best_model_path:
            return
        score = callback.best_model_score
        score_text = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
        print(f"Best checkpoint{score_text}: {callback.best_model_path}")
        last = ResumeCheckpoint.path(self.trainer)
        if last.exists():
            print(f"Last checkpoint: {last}")
        print(f"Test it with: python -m mnist_lightning test --ckpt_path {callback.best_model_path}")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self._get(self.config_init, "trainer", default={})
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            plugins.append(SafeCheckpointIO())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            # Lightning's default bar redraws every step, which costs more than a step of this net.
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["export"]:
        from mnist_lightning.export import main as export_main

        export_main(argv[1:])
        return
    try:
        # In a context of its own: jsonargparse (4.53) leaves the parser in a ContextVar that is never reset, and
        # through the parser's instantiators it would keep the CLI, the Trainer, the model and the datasets (~55 MB
        # of MNIST) alive until the process ends.
        contextvars.copy_context().run(MNISTLightningCLI, args=args)  # None: LightningCLI reads sys.argv itself
        # The Trainer, model and datasets form reference cycles; free them now, before the interpreter's exit
        # (which does not collect them before the CUDA libraries' exit handlers page in ~125 MB of code).
        gc.collect()
    except (UserInputError, MisconfigurationException) as err:  # the user's input: message, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


def run() -> NoReturn:
    """The process's entry point (`python -m mnist_lightning`, `mnist-lightning`): `main()`, then `exit_process`."""
    try:
        main()
        code = 0
    except SystemExit as exit_:  # sys.exit(2), TrainingInterrupted(143), ...
        code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        if isinstance(exit_.code, str):
            print(exit_.code, file=sys.stderr)
    exit_process(code)


def exit_process(code: int) -> NoReturn:
    """End the process as Python would, minus the native libraries' exit-time destructors.

    Python's own shutdown work still runs (other threads joined, atexit handlers: logging, loggers,
    multiprocessing); then `os._exit` skips the C++ static destructors of the CUDA libraries that the
    CUDA build of torch loads even on a machine without a GPU. Those destructors page in ~125 MB of
    library code that the run never touched: measured on the 2-core CPU machine, the whole process's
    peak memory (README, "Speed"). Files are already closed: checkpoints are fsynced when saved and
    Lightning finalises its loggers at the end of each run.
    """
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # the handlers Python would run at exit, in the same order
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
