"""The command line: LightningCLI with this project's model, data, configs and safety rails.

    python -m mnist_lightning fit                                  # configs/default.yaml
    python -m mnist_lightning fit --config configs/seed.yaml       # the tutorial, exactly
    python -m mnist_lightning fit --config configs/fast.yaml       # the opt-in speed path
    python -m mnist_lightning test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python -m mnist_lightning fit --config lightning_logs/version_0/config.yaml --ckpt_path last
    python -m mnist_lightning export --ckpt_path CKPT --format onnx      # mnist_lightning.export
    python -m mnist_lightning sweep --config configs/sweeps/tutorial.yaml   # mnist_lightning.experiments
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl+C while torch and Lightning load (seconds): exit quietly, not mid-import with a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import copy
import logging
import os
import shlex
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import UserInputError
from mnist_lightning.fast import FastMNISTClassifier, quiet_dataloader_iter_warnings
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.predict import PredictionTable
from mnist_lightning.resume import (
    LAST_CHECKPOINT,
    ResumeCheckpoint,
    SafeCheckpointIO,
    TrainingDiverged,
    TrainingInterrupted,
    checkpoint_dir,
    checkpoint_files,
    claim_run_dir,
    load_checkpoint_file,
    python_command,
    remove_superseded_checkpoints,
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
EXTRA_COMMANDS = ("export", "sweep", "seeds")
PROGRESS_BAR_REFRESH_STEPS = 50
FRESH_START = "Start a new run with the same settings by adding --trainer.logger.init_args.version null."
# Data settings that define what the model's input means and which images are validation images:
# evaluation inherits them from the checkpoint, and a resume must keep them.
INPUT_SETTINGS = ("dataset", "normalize", "deskew")
SPLIT_SETTINGS = ("split_seed", "val_size")
# What else a checkpoint fixes for an exact resume: the data order and the optimiser's steps.
RESUME_DATA_SETTINGS = (*INPUT_SETTINGS, *SPLIT_SETTINGS, "batch_size")
# Lightning messages that say nothing a user of this project needs (each checked: issue 12):
QUIET = (
    r".*`weights_only` was not set",  # Lightning's own loads; ours are weights_only=True (SafeCheckpointIO)
    r".*isinstance\(treespec, LeafSpec\)",  # torch's pytree deprecation, raised inside Lightning
    r".*The dirpath has changed from",  # predict: no checkpoints are written there
    r".*Checkpoint directory .* exists and is not empty",  # a resume continues in its own folder on purpose
    r".*Precision bf16-mixed is not supported by the model summary",  # only the summary's size estimate (MB)
)


def _section(config: Namespace, subcommand: str | None) -> Namespace:
    return config[subcommand] if subcommand else config


def _logger_namespace(config: Namespace) -> Namespace | None:
    """The TensorBoardLogger entry of a parsed config, or None."""
    logger = config.get("trainer", Namespace()).get("logger")
    if isinstance(logger, list):
        logger = logger[0] if logger else None
    if isinstance(logger, Namespace) and str(logger.get("class_path", "")).endswith("TensorBoardLogger"):
        return logger
    return None


def _runs_root(logger: Namespace) -> Path:
    return Path(logger.init_args.get("save_dir") or "lightning_logs") / (logger.init_args.get("name") or "")


def _run_of_checkpoint(ckpt_path: str, logger: Namespace | None) -> int | str | None:
    """The run's version when the checkpoint lies in `<logs>/version_N/checkpoints/` of this config's logger."""
    if logger is None:
        return None
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == _runs_root(logger).resolve():
        name = path.parent.parent.name
        number = name.removeprefix("version_")
        return int(number) if name.startswith("version_") and number.isdigit() else name
    return None


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
    """LightningCLI for MNISTClassifier (or a subclass, e.g. FastMNISTClassifier) + MNISTDataModule.

    The project's rails: configs/default.yaml under every subcommand; each run in a folder of its
    own, claimed atomically; checkpoints written atomically and loaded weights-only; `last.ckpt`
    and signal-safe interrupts (ResumeCheckpoint); evaluation logs into the checkpoint's own run and
    inherits its data settings; a resume refuses settings that differ from the checkpoint's.

    Args:
        callbacks: extra callbacks for this run's Trainer (e.g. a sweep's pruning callback).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, callbacks: list[Any] | None = None) -> None:
        default_files = [str(DEFAULT_CONFIG)] if DEFAULT_CONFIG.is_file() else []
        self.checkpoint: dict[str, Any] | None = None
        self.parsed: Namespace | None = None  # the config as given, before the checkpoint's hyperparameters
        super().__init__(
            MNISTClassifier,
            MNISTDataModule,
            subclass_mode_model=True,
            save_config_callback=RunConfigSaver,
            parser_kwargs={sub: {"default_config_files": default_files} for sub in LIGHTNING_SUBCOMMANDS},
            trainer_defaults={"callbacks": [ResumeCheckpoint(), *(callbacks or [])]},
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
        parser.add_argument(
            "--allow_untrained",
            type=bool,
            default=False,
            help="validate/test/predict only: run without --ckpt_path, i.e. on an untrained net (for debugging).",
        )

    # ------------------------------------------------------------------- parsing: checkpoints
    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then check the values and the checkpoint before LightningCLI reads its hyperparameters."""
        super().parse_arguments(parser, args)
        self.argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        seed = config.get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
            raise UserInputError(f"seed_everything must be in [0, 2**32 - 1] (or true for a random seed); got {seed}.")
        threads = config.get("torch_threads")
        if threads is not None and threads < 1:
            raise UserInputError(f"torch_threads must be >= 1; got {threads}.")
        ckpt_path = config.ckpt_path = self._resolve_ckpt_path(subcommand, config)
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            self.checkpoint = load_checkpoint_file(ckpt_path)  # raises CheckpointError naming the file
        self.parsed = copy.deepcopy(self.config)

    def _resolve_ckpt_path(self, subcommand: str, config: Namespace) -> str | None:
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
        logger = _logger_namespace(config)
        version = logger.init_args.get("version") if logger is not None else None
        if version is None:
            raise UserInputError(
                f"--ckpt_path {ckpt_path}: nothing to resume or evaluate without the run it belongs to. Pass the run's "
                f"own config (--config lightning_logs/version_N/config.yaml --ckpt_path {ckpt_path}) or a checkpoint file."
            )
        folder = _runs_root(logger) / (version if isinstance(version, str) else f"version_{version}") / "checkpoints"
        files = checkpoint_files(folder)
        found = [p for p in files if (p.name == LAST_CHECKPOINT) == (ckpt_path == "last")]
        if not found:
            stopped = " (the run stopped before its first checkpoint)" if not files else ""
            advice = f" {FRESH_START}" if subcommand == "fit" else ""
            raise UserInputError(f"--ckpt_path {ckpt_path}: nothing to {'resume' if subcommand == 'fit' else subcommand}, "
                                 f"no {ckpt_path} checkpoint in {folder}{stopped}"
                                 f"{': it holds ' + ', '.join(p.name for p in files) if files else ''}.{advice}")
        return str(found[-1])

    # ------------------------------------------------------------------- before the classes exist
    def before_instantiate_classes(self) -> None:
        config = _section(self.config, self.subcommand)
        if config.get("torch_threads") is not None:
            torch.set_num_threads(config.torch_threads)
        if self.subcommand == "predict":
            config.trainer.logger = False  # predictions go to the console and --predictions_csv, not to a run
        if self.checkpoint is not None:
            self._take_settings_from_checkpoint(config)
            config = _section(self.config, self.subcommand)  # parsed anew with the checkpoint's settings
        logger = _logger_namespace(config)
        if logger is None:
            return
        if logger.init_args.get("version") is None and self.subcommand != "fit" and config.get("ckpt_path"):
            logger.init_args.version = _run_of_checkpoint(config.ckpt_path, logger)  # evaluate into its run
        writes_logs = not config.trainer.get("fast_dev_run")  # fast_dev_run writes nothing
        if logger.init_args.get("version") is None and writes_logs and rank_zero_only.rank == 0:
            logger.init_args.version = claim_run_dir(_runs_root(logger))

    def _take_settings_from_checkpoint(self, config: Namespace) -> None:
        """Data settings the checkpoint fixes are taken from it; a different explicit value is an error.

        LightningCLI restores only the model's hyperparameters; a model trained with normalised input
        fed unnormalised images, or validated on images it trained on, would silently get worse.
        """
        assert self.checkpoint is not None and self.parsed is not None
        given = self.parsed[self.subcommand]
        defaults = self.defaults(self.subcommand)
        saved = self.checkpoint.get("datamodule_hyper_parameters") or {}
        resume = self.subcommand == "fit"
        keys = RESUME_DATA_SETTINGS if resume else (*INPUT_SETTINGS, *SPLIT_SETTINGS)
        inherited = {}
        for key in keys:
            if key not in saved:
                continue
            value = given.data.get(key)
            explicit = value != defaults.data.get(key) or self._on_command_line(f"data.{key}")
            if (explicit or resume) and value != saved[key]:
                raise UserInputError(self._mismatch(f"data.{key}", value, saved[key]))
            inherited[key] = saved[key]
        data_dir = saved.get("data_dir")
        if data_dir and given.data.get("data_dir") == defaults.data.get("data_dir") and Path(data_dir).is_dir():
            inherited["data_dir"] = data_dir  # where the run found its data, while it is still there
        if resume:
            self._check_resumed_model(given, defaults)
        if inherited:
            self.config = self.parser.parse_object({self.subcommand: {"data": inherited}}, self.config)

    def defaults(self, subcommand: str) -> Namespace:
        """A subcommand's values with nothing given: configs/default.yaml over the classes' defaults."""
        return self.parser.parse_args([subcommand])[subcommand]

    def _on_command_line(self, key: str) -> bool:
        return any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in self.argv)

    def _check_resumed_model(self, given: Namespace, defaults: Namespace) -> None:
        """A resume refuses model, optimiser and schedule settings that differ from the checkpoint's."""
        assert self.checkpoint is not None
        saved = {k: v for k, v in (self.checkpoint.get("hyper_parameters") or {}).items() if not k.startswith("_")}
        model = given.model.get("init_args", given.model)
        default_model = defaults.model.get("init_args", defaults.model) if defaults.get("model") else Namespace()
        for key, value in saved.items():
            mine = model.get(key) if isinstance(model, Namespace) else None
            if mine is None:
                continue
            if isinstance(mine, list | tuple):
                mine = list(mine)
            explicit = mine != default_model.get(key) or self._on_command_line(f"model.{key}")
            if mine != value and explicit:
                raise UserInputError(self._mismatch(f"model.{key}", mine, value))
        saved_epochs, epochs = self.checkpoint.get("max_epochs"), given.trainer.get("max_epochs")
        if saved.get("lr_schedule", "none") != "none" and saved_epochs is not None and epochs != saved_epochs:
            raise UserInputError(self._mismatch("trainer.max_epochs", epochs, saved_epochs)
                                 + f" (The {saved['lr_schedule']} schedule spans the run's {saved_epochs} epochs.)")
        saved_seed = self.checkpoint.get("seed")
        seed = given.get("seed_everything")
        if saved_seed is not None and isinstance(seed, int) and not isinstance(seed, bool) and seed != saved_seed:
            raise UserInputError(self._mismatch("seed_everything", seed, saved_seed))

    def _mismatch(self, key: str, given: Any, saved: Any) -> str:
        if self.subcommand == "fit":
            return (f"resuming with {key}={given!r}, but the checkpoint was trained with {key}={saved!r}: an exact "
                    f"resume keeps it. Drop the option (or pass {saved!r}); to change it, start a new run.")
        return (f"{key}={given!r}, but the checkpoint's run used {key}={saved!r}, which defines its input or its "
                f"validation images. Drop the option to use the run's value.")

    def instantiate_classes(self) -> None:
        self._check_model_fits_in_memory()
        try:
            super().instantiate_classes()
        except (MemoryError, RuntimeError, ValueError) as err:
            if isinstance(err, UserInputError):
                raise
            if isinstance(err, MemoryError) or "allocate" in str(err):
                raise UserInputError(self._memory_message()) from None
            if isinstance(err, RuntimeError):
                raise
            raise UserInputError(str(err)) from None

    def _parameter_count(self) -> tuple[list[int], int]:
        model = _section(self.config, self.subcommand).model
        hidden = list(model.get("init_args", model).get("hidden_sizes") or [])
        widths = [28 * 28, *hidden, 10]
        return hidden, sum(a * b + b for a, b in zip(widths, widths[1:], strict=False))

    def _check_model_fits_in_memory(self) -> None:
        """Weights, gradients and Adam's two moments: 16 bytes per parameter, checked before allocating."""
        _, params = self._parameter_count()
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        if memory and params * 16 > memory:
            raise UserInputError(self._memory_message())

    def _memory_message(self) -> str:
        hidden, params = self._parameter_count()
        return (f"model.hidden_sizes {hidden} needs {params:,} parameters: {params * 4 / 2**30:.1f} GiB for the weights, "
                f"~{params * 16 / 2**30:.0f} GiB to train with Adam, more than this machine can allocate. Use smaller layers.")

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = _section(self.config_init, self.subcommand).get("trainer") or {}
        plugins = trainer_config.get("plugins") or []
        plugins = list(plugins) if isinstance(plugins, list) else [plugins]
        if not any(hasattr(p, "save_checkpoint") for p in plugins):
            plugins.append(SafeCheckpointIO())
        callbacks = trainer_config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            # Lightning's default bar redraws every step, which costs more than a step of this net.
            callbacks.append(TQDMProgressBar(refresh_rate=PROGRESS_BAR_REFRESH_STEPS))
        if self.subcommand == "predict":
            callbacks.append(PredictionTable(csv_path=_section(self.config, self.subcommand).get("predictions_csv")))
        try:
            return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)
        except (MisconfigurationException, ValueError, RuntimeError, ImportError) as err:  # Lightning's checks
            raise UserInputError(f"trainer settings: {err}") from None

    # ------------------------------------------------------------------- fit
    def before_fit(self) -> None:
        if isinstance(self.model, FastMNISTClassifier):
            self.model.check_trainer_flags(self.trainer)
        folder = checkpoint_dir(self.trainer)  # known before fit starts
        run_dir = Path(self.trainer.log_dir or folder.parent)
        if self.config_init[self.subcommand].get("ckpt_path"):
            if self.checkpoint is not None:
                remove_superseded_checkpoints(folder, self.checkpoint)
            return
        if checkpoint_files(folder):
            raise UserInputError(f"{folder} already holds checkpoints of an earlier run; nothing was changed. Resume it "
                                 f"with --ckpt_path last, or {FRESH_START[0].lower()}{FRESH_START[1:]}")
        if run_dir.is_dir() and any(p.name.startswith("events.out") for p in run_dir.iterdir()):
            raise UserInputError(f"{run_dir} holds an earlier run that stopped before its first checkpoint: nothing to "
                                 f"resume, and nothing was changed. {FRESH_START}")

    def fit(self, model: Any, **kwargs: Any) -> None:
        """`trainer.fit`, with FastMNISTClassifier's known Lightning warnings silenced around it only."""
        with quiet_dataloader_iter_warnings() if isinstance(model, FastMNISTClassifier) else nullcontext():
            self.trainer.fit(model, **kwargs)

    def after_fit(self) -> None:
        callback = next((c for c in self.trainer.checkpoint_callbacks
                         if isinstance(c, ModelCheckpoint) and c.best_model_path), None)
        if not self.trainer.is_global_zero or callback is None:
            return
        score = callback.best_model_score
        score_text = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
        print(f"Best checkpoint{score_text}: {callback.best_model_path}")
        last = ResumeCheckpoint.path(self.trainer)
        if last.exists():
            print(f"Last checkpoint: {last}")
        print(f"Test it with: {self.test_command(callback.best_model_path)}")

    def test_command(self, ckpt_path: str) -> str:
        """The `test` command for a checkpoint of this run, with the data settings that differ from the defaults.

        The checkpoint carries the model and the data's input and split settings; where the data is
        and how it is read are this machine's, so they are spelt out.
        """
        config = self.config[self.subcommand]
        defaults = self.defaults("test")
        args = [python_command(), "-m", "mnist_lightning", "test", "--ckpt_path", ckpt_path]
        for key in ("data_dir", "verify", "pipeline", "eval_batch_size", "num_workers"):
            if config.data.get(key) != defaults.data.get(key):
                args += [f"--data.{key}", str(config.data.get(key)).lower() if isinstance(config.data.get(key), bool)
                         else str(config.data.get(key))]
        if config.trainer.get("accelerator") not in (None, "auto", defaults.trainer.get("accelerator")):
            args += ["--trainer.accelerator", str(config.trainer.accelerator)]
        return shlex.join(args)


class _DropAdverts(logging.Filter):
    """Lightning's "Tip: ... try installing litlogger/litmodels" lines: advertising, not information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


@contextmanager
def quiet_console() -> Iterator[None]:
    """Silence the Lightning messages in QUIET and its cloud tips for one command, not process-wide."""
    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    adverts = _DropAdverts()
    lightning_info.addFilter(adverts)
    try:
        with warnings.catch_warnings():
            for message in QUIET:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        lightning_info.removeFilter(adverts)


def main(args: list[str] | None = None) -> None:
    """Run one command; a user's mistake ends with `error: ...` on stderr and exit code 2, no traceback."""
    argv = sys.argv[1:] if args is None else args
    try:
        if argv[:1] and argv[0] in EXTRA_COMMANDS:
            if argv[0] == "export":
                from mnist_lightning.export import main as export_main

                export_main(argv[1:])
            else:
                from mnist_lightning.experiments import main as experiments_main

                experiments_main(argv)
            return
        with quiet_console():
            MNISTLightningCLI(args=args)  # None: LightningCLI reads sys.argv itself
    except (UserInputError, MisconfigurationException) as err:  # the user's input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted:  # saved, and the resume command printed: a further Ctrl+C must not break the exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not interrupt the goodbye
        print("\ninterrupted; nothing more was saved.", file=sys.stderr)
        sys.exit(130)


def skip_failing_nvml_check() -> None:
    """Turn off torch's NVML-based CUDA check where NVIDIA's library cannot load, so it cannot succeed anyway.

    `import pytorch_lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1; torch's Adam then asks on every
    step whether CUDA is available, and on a machine without the driver each ask tries to dlopen
    libnvidia-ml and fails: +26% on the bare tutorial-sized loop, measured (docs/speed.md). The answer is
    the same without the check.
    """
    import ctypes

    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or not torch.backends.cuda.is_built():
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def run() -> None:
    """The process's entry point (`python -m mnist_lightning`, `mnist-lightning`)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl+C is Python's KeyboardInterrupt
    skip_failing_nvml_check()
    main()


if __name__ == "__main__":
    # Run the CLI from this file imported under its own name, so that its classes pickle as
    # `mnist_lightning.__main__.X`: processes started by ddp_spawn cannot import `python -m`'s `__main__`.
    from mnist_lightning.__main__ import run as run_imported

    run_imported()
