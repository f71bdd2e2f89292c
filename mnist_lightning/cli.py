"""The command line: LightningCLI with this project's model, data, default config and safety rails.

    python -m mnist_lightning fit                                  # mnist_lightning/default.yaml
    python -m mnist_lightning fit --config configs/seed.yaml       # the tutorial, exactly
    python -m mnist_lightning fit --model.net my_nets.SmallCNN --model.optimizer torch.optim.SGD
    python -m mnist_lightning test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python -m mnist_lightning fit --config lightning_logs/version_0/config.yaml --ckpt_path last

What the CLI adds to LightningCLI, each in the module that owns it: run folders (`runs.py`), safe
checkpoint files and signal-safe interrupts (`resume.py`), the settings a checkpoint fixes
(`checkpoint_settings.py`). `__main__.py` starts it and turns a user's mistake into one line.
"""

from __future__ import annotations

import copy
import errno
import importlib
import inspect
import logging
import os
import shutil
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from jsonargparse import Namespace
from pytorch_lightning.callbacks import (
    DeviceStatsMonitor,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    TQDMProgressBar,
)
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_only, rank_zero_warn
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning import checkpoint_settings, refit
from mnist_lightning.commands import mnist_command
from mnist_lightning.data import MNISTDataModule
from mnist_lightning.errors import UserInputError, first_line
from mnist_lightning.fast import FastMNISTClassifier, quiet_dataloader_iter_warnings
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.predict import PredictionTable
from mnist_lightning.resume import (
    ResumeCheckpoint,
    SafeCheckpointIO,
    checkpoint_dir,
    checkpoint_files,
    load_checkpoint_file,
    remove_superseded_checkpoints,
    unlogged_monitors,
)
from mnist_lightning.runs import (
    NOT_SAVED,
    RUN_PREFIX,
    RunConfigSaver,
    claim_run_dir,
    claim_run_dir_without_logger,
    has_no_logger,
    keep_csv_rows,
    logger_namespace,
    logger_of_run,
    refuse_earlier_run,
    reopen_run,
    resolve_ckpt_path,
    run_dir_of_checkpoint,
    run_of_checkpoint,
    runs_root,
)

# Shipped inside the package, so an installed wheel runs with the same defaults as the checkout.
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")
PROGRESS_BAR_REFRESH_STEPS = 50
BYTES_PER_PARAMETER = 16  # to train: weights, gradients and an optimizer's two moments (Adam's), float32
# Lightning's callbacks that refuse a trainer without a logger; with `--trainer.logger false` they step aside.
NEED_A_LOGGER = (LearningRateMonitor, DeviceStatsMonitor)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Lightning messages that say nothing a user of this project needs (each checked: issue 12):
QUIET = (
    r".*`weights_only` was not set",  # Lightning's own loads; ours are weights_only=True (SafeCheckpointIO)
    r".*isinstance\(treespec, LeafSpec\)",  # torch's pytree deprecation, raised inside Lightning
    r".*The dirpath has changed from",  # predict: no checkpoints are written there
    r".*Checkpoint directory .* exists and is not empty",  # a resume continues in its own folder on purpose
    r".*Precision bf16-mixed is not supported by the model summary",  # only the summary's size estimate (MB)
    r".*Total length of `list` across ranks is zero",  # data.val_size 0: no validation, said in a line of ours
)


def _section(config: Namespace, subcommand: str | None) -> Namespace:
    return config[subcommand] if subcommand else config


def raised_by_lightning(err: BaseException) -> bool:
    """Whether Lightning itself raised `err` (its checks of the Trainer's flags), not code it called."""
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "") if tb is not None else ""
    return module.startswith(("pytorch_lightning.", "lightning_fabric."))


class MNISTLightningCLI(LightningCLI):
    """LightningCLI for MNISTClassifier (or a subclass, e.g. FastMNISTClassifier) + MNISTDataModule.

    The parts (net, optimizer, schedule) are the model's init arguments, given as class paths;
    LightningCLI's own `--optimizer`/`--lr_scheduler` are off, so each part is set in one place.
    The project's rails: the default config under every subcommand; each run in a folder of its
    own, claimed atomically; checkpoints written atomically and loaded weights-only; `last.ckpt`
    and signal-safe interrupts (ResumeCheckpoint); evaluation logs into the checkpoint's own run and
    inherits its data settings; a resume refuses settings that differ from the checkpoint's.

    Args:
        callbacks: extra callbacks for this run's Trainer (e.g. a sweep's pruning callback).
        resume_hint: print how to resume after Ctrl+C / SIGTERM (off for a sweep's trials: the
            sweep command itself is what continues them).
    """

    def __init__(self, args: list[str] | None = None, run: bool = True, callbacks: list[Any] | None = None,
                 resume_hint: bool = True) -> None:
        self.checkpoint: dict[str, Any] | None = None
        self.parsed: Namespace | None = None  # the config as given, before the checkpoint's hyperparameters
        self.claimed_run_dir: Path | None = None  # the new run folder this command created, if any
        try:
            super().__init__(
                MNISTClassifier,
                MNISTDataModule,
                subclass_mode_model=True,
                auto_configure_optimizers=False,
                save_config_callback=RunConfigSaver,
                parser_kwargs={sub: {"default_config_files": [str(DEFAULT_CONFIG)]} for sub in LIGHTNING_SUBCOMMANDS},
                trainer_defaults={"callbacks": [ResumeCheckpoint(resume_hint=resume_hint), *(callbacks or [])]},
                args=args,
                run=run,
            )
        except BaseException as err:
            full = next((e for e in _chain(err) if isinstance(e, OSError) and e.errno in DISK_FULL), None)
            removed = self._remove_unused_run_dir(disk_full=full is not None)
            mistake = self._disk_full(full, removed) if full is not None else self._user_mistake(err)
            if mistake is not None:
                raise mistake from None
            raise

    def _remove_unused_run_dir(self, disk_full: bool) -> bool:
        """A command that stops before its first training step (a refused run), or on a full disk before its
        first checkpoint, leaves no run folder behind: the one it claimed goes, unless it holds a checkpoint.
        A run that trained and then failed otherwise (e.g. its loss diverged) keeps its curves."""
        run_dir = self.claimed_run_dir
        if run_dir is None or not run_dir.is_dir() or rank_zero_only.rank != 0:
            return False
        trainer = getattr(self, "trainer", None)
        trained = trainer is not None and trainer.global_step > 0
        if (trained and not disk_full) or checkpoint_files(run_dir / "checkpoints"):
            return False
        shutil.rmtree(run_dir, ignore_errors=True)
        return True

    def _disk_full(self, err: OSError, removed: bool) -> UserInputError:
        run_dir = self.claimed_run_dir
        where = f" {err.filename}" if err.filename else f" the run's files in {run_dir}" if run_dir else ""
        if removed:
            after = f" The unfinished run folder {run_dir} was removed (no checkpoint had been saved)."
        elif run_dir is not None:
            after = f" The run folder {run_dir} and its checkpoints are kept."
        else:
            after = ""
        return UserInputError(f"the disk is full: could not write{where} ({err.strerror}). Free some space and run "
                              f"again.{after}")

    def _user_mistake(self, err: BaseException) -> UserInputError | None:
        """A user's mistake that Lightning reports deep inside a fit, as one line: a monitor never logged."""
        trainer = getattr(self, "trainer", None)
        if isinstance(err, RuntimeError) and trainer is not None and (missing := unlogged_monitors(trainer)):
            logged = ", ".join(sorted(trainer.callback_metrics)) or "none"
            last = ResumeCheckpoint.path(trainer)
            saved = f" This epoch is saved: {last}; fix the monitor and resume with --ckpt_path last." if last.exists() else ""
            return UserInputError(f"EarlyStopping monitors {', '.join(missing)}, which this run does not log (it logs "
                                  f"{logged}): set its monitor to one of those.{saved}")
        return None

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
        # The number of classes is the data's: the net's outputs and the metrics follow it, never retyped.
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")
        parser.link_arguments("data.num_classes", "model.init_args.net.init_args.num_classes", apply_on="instantiate")

    # ------------------------------------------------------------------- parsing: checkpoints
    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then check the values and the checkpoint before LightningCLI reads its hyperparameters."""
        super().parse_arguments(parser, args)
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        self.on_command_line = checkpoint_settings.NamedOnCommandLine.of(argv)
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
        check_net_takes_num_classes(config)
        ckpt_path = config.ckpt_path = resolve_ckpt_path(subcommand, config)
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            self.checkpoint = load_checkpoint_file(ckpt_path)  # raises CheckpointError naming the file
        self.parsed = copy.deepcopy(self.config)

    # ------------------------------------------------------------------- before the classes exist
    def before_instantiate_classes(self) -> None:
        config = _section(self.config, self.subcommand)
        if config.get("torch_threads") is not None:
            torch.set_num_threads(config.torch_threads)
        if self.subcommand == "predict":
            config.trainer.logger = False  # predictions go to the console and --predictions_csv, not to a run
        if self.checkpoint is not None:
            self._take_settings_from_checkpoint()
            config = _section(self.config, self.subcommand)  # parsed anew with the checkpoint's settings
        if self.subcommand in ("validate", "test") and config.get("ckpt_path") and not self._logger_given():
            self._log_with_the_runs_logger(config.ckpt_path)
            config = _section(self.config, self.subcommand)
        writes_logs = not config.trainer.get("fast_dev_run")  # fast_dev_run writes nothing
        if has_no_logger(config) and self.subcommand != "predict":
            self._run_dir_without_logger(config, writes_logs)
            return
        logger = logger_namespace(config)
        if logger is None:
            return
        if logger.init_args.get("version") is None and self.subcommand != "fit" and config.get("ckpt_path"):
            logger.init_args.version = run_of_checkpoint(config.ckpt_path, logger)  # evaluate into its run
        if logger.init_args.get("version") is None and writes_logs and rank_zero_only.rank == 0:
            logger.init_args.version = claim_run_dir(runs_root(logger))
            self.claimed_run_dir = runs_root(logger) / f"{RUN_PREFIX}{logger.init_args.version}"
        if self.subcommand != "fit" or config.get("ckpt_path"):
            keep_csv_rows(logger)  # a run reopened: a resume, or an evaluation added to it

    def _logger_given(self) -> bool:
        """`--trainer.logger` (or one of its init args) named on the command line: the user's choice wins."""
        return any(key == "trainer.logger" or key.startswith("trainer.logger.") for key in self.on_command_line.given)

    def _log_with_the_runs_logger(self, ckpt_path: str) -> None:
        """An evaluation of a run's checkpoint logs with the run's own logger (as its config.yaml saved it) into
        the run's folder: a CSV run gets rows in its metrics.csv, not a TensorBoard event file."""
        run_dir = run_dir_of_checkpoint(ckpt_path)
        saved = logger_of_run(run_dir) if run_dir is not None else NOT_SAVED
        if saved is NOT_SAVED:
            return
        self.config = self.parser.parse_object({self.subcommand: {"trainer": {"logger": saved}}}, self.config)
        logger = logger_namespace(_section(self.config, self.subcommand))
        if logger is not None and run_dir is not None:
            reopen_run(logger, run_dir)

    def _run_dir_without_logger(self, config: Namespace, writes_logs: bool) -> None:
        """Without a logger the run's folder is the trainer's default_root_dir (Lightning puts checkpoints and
        the saved config there): a new `version_N` for a new fit, the checkpoint's own run otherwise."""
        trainer = config.trainer
        ckpt_path = config.get("ckpt_path")
        if self.subcommand == "fit" and ckpt_path is None:
            if writes_logs and rank_zero_only.rank == 0:
                self.claimed_run_dir = claim_run_dir_without_logger(trainer.get("default_root_dir"))
                trainer.default_root_dir = str(self.claimed_run_dir)
            return
        if trainer.get("default_root_dir") is not None:  # given, e.g. by the run's own saved config
            return
        run_dir = run_dir_of_checkpoint(ckpt_path) if ckpt_path not in (None, "hpc") else None
        if run_dir is not None:
            trainer.default_root_dir = str(run_dir)
        elif self.subcommand != "fit":
            self.save_config_callback = None  # an evaluation outside any run writes nothing (not ./config.yaml)

    def _take_settings_from_checkpoint(self) -> None:
        """The data settings the checkpoint fixes are taken from it; a resume also checks the model's."""
        assert self.checkpoint is not None and self.parsed is not None and self.subcommand is not None
        given, defaults = self.parsed[self.subcommand], self.defaults(self.subcommand)
        inherited = checkpoint_settings.data_settings_from_checkpoint(
            self.checkpoint, self._datamodule_class, self.subcommand, given.data, defaults.data, self.on_command_line)
        if self.subcommand == "fit":
            checkpoint_settings.check_resumed_run(self.checkpoint, given, defaults, self.on_command_line)
        if inherited:
            self.config = self.parser.parse_object({self.subcommand: {"data": inherited}}, self.config)

    # A subcommand's defaults, per CLI class: the same for every CLI of a process. A parse costs 0.2-0.3 s,
    # and a sweep or `seeds` builds one CLI per trial (each parsing them again, before this cache).
    _defaults_of_class: ClassVar[dict[tuple[type, str], Namespace]] = {}

    def defaults(self, subcommand: str) -> Namespace:
        """A subcommand's values with nothing given: the default config over the classes' defaults (parsed once)."""
        key = (type(self), subcommand)
        if key not in self._defaults_of_class:
            self._defaults_of_class[key] = self.parser.parse_args([subcommand])[subcommand]
        return copy.deepcopy(self._defaults_of_class[key])

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except (MemoryError, RuntimeError, ValueError) as err:
            mistake = _user_mistake_in(err)  # jsonargparse wraps what a class raised in its own ValueError
            if mistake is not None:
                raise mistake from None
            if isinstance(err, MemoryError) or "can't allocate memory" in str(err) or "out of memory" in str(err):
                raise UserInputError(f"building the model ran out of memory ({first_line(err)}): the net is larger "
                                     "than this machine can hold. Choose a smaller one.") from None
            raise
        self._check_model_fits_in_memory()

    def _check_model_fits_in_memory(self) -> None:
        """Training needs ~16 bytes per parameter; refuse, before any step, a net that cannot train here."""
        params = sum(p.numel() for p in self.model.parameters())
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
        if self.subcommand == "fit" and memory and params * BYTES_PER_PARAMETER > memory:
            raise UserInputError(
                f"the net has {params:,} parameters: {params * 4 / 2**30:.1f} GiB for the weights, "
                f"~{params * BYTES_PER_PARAMETER / 2**30:.0f} GiB to train, more than this machine's "
                f"{memory / 2**30:.0f} GiB. Choose a smaller net.")

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
            predict = _section(self.config, self.subcommand)
            callbacks.append(PredictionTable(csv_path=predict.get("predictions_csv"), ckpt_path=predict.get("ckpt_path")))
        no_validation = refit.no_validation_reason(self.datamodule, trainer_config.get("limit_val_batches"))
        if self.subcommand == "fit" and no_validation:  # the refit protocol (refit.py): no validation to watch
            callbacks, line = refit.without_validation_watchers(callbacks, no_validation)
            if line and rank_zero_only.rank == 0:
                print(line, flush=True)
        if trainer_config.get("logger") in (False, []) and self.subcommand != "predict":
            callbacks = _without_callbacks_that_need_a_logger(callbacks)
        try:
            return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)
        except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as err:
            if isinstance(err, MisconfigurationException) or raised_by_lightning(err):  # its checks of the flags
                raise UserInputError(f"trainer settings: {first_line(err)}") from None
            raise

    # ------------------------------------------------------------------- fit
    def before_fit(self) -> None:
        if isinstance(self.model, FastMNISTClassifier):
            self.model.check_trainer_flags(self.trainer)
        folder = checkpoint_dir(self.trainer)  # known before fit starts
        if self.config_init[self.subcommand].get("ckpt_path"):
            if self.checkpoint is not None:
                remove_superseded_checkpoints(folder, self.checkpoint)
            return
        refuse_earlier_run(folder, Path(self.trainer.log_dir or folder.parent))

    def fit(self, model: Any, **kwargs: Any) -> None:
        """`trainer.fit`, with FastMNISTClassifier's known Lightning warnings silenced around it only."""
        with quiet_dataloader_iter_warnings() if isinstance(model, FastMNISTClassifier) else nullcontext():
            self.trainer.fit(model, **kwargs)

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        self._say_why_nothing_trained()
        callback = next((c for c in self.trainer.checkpoint_callbacks
                         if isinstance(c, ModelCheckpoint) and c.best_model_path), None)
        if callback is not None:
            score = callback.best_model_score
            score_text = f" ({callback.monitor} {float(score):.4f})" if score is not None else ""
            print(f"Best checkpoint{score_text}: {callback.best_model_path}")
        last = ResumeCheckpoint.path(self.trainer)
        no_validation = refit.no_validation_reason(self.datamodule, self.trainer.limit_val_batches)
        if callback is None and no_validation and last.exists():  # the refit protocol: the last epoch is the model
            print(f"No validation ran ({no_validation}): the model is the last checkpoint, {last}")
        elif last.exists():
            print(f"Last checkpoint: {last}")
        tested = callback.best_model_path if callback is not None else str(last) if last.exists() else None
        if tested:
            print(f"Test it with: {self.test_command(tested)}")

    def _say_why_nothing_trained(self) -> None:
        """A fit that made no optimizer step ends normally (exit 0: each case is a legal request, e.g.
        limit_train_batches 0 to validate only), but says so in one line instead of nothing."""
        trainer = self.trainer
        started_at = int(self.checkpoint.get("global_step") or 0) if self.checkpoint is not None else 0
        if trainer.global_step != started_at:
            return
        if trainer.max_epochs == 0:
            why = "--trainer.max_epochs is 0"
        elif trainer.limit_train_batches == 0 or trainer.num_training_batches == 0:
            why = "there are no training batches (--trainer.limit_train_batches 0, or no training images)"
        elif self.checkpoint is not None and trainer.fit_loop.done:
            why = (f"the checkpoint has already trained {trainer.current_epoch} epochs of max_epochs "
                   f"{trainer.max_epochs}; pass a larger --trainer.max_epochs to train on")
        else:
            why = "the trainer's limits (max_steps, max_time) allowed no step"
        print(f"nothing trained: {why}.", file=sys.stderr)

    def test_command(self, ckpt_path: str) -> str:
        """The `test` command for a checkpoint of this run, with the data settings that differ from the defaults.

        The checkpoint carries the model and the data's input and split settings; where the data is
        and how it is read are this machine's, so they are spelt out.
        """
        config = self.config[self.subcommand]
        defaults = self.defaults("test")
        args = ["test", "--ckpt_path", ckpt_path]
        for key in ("data_dir", "verify", "pipeline", "eval_batch_size", "num_workers"):
            value = config.data.get(key)
            if value != defaults.data.get(key):
                args += [f"--data.{key}", str(value).lower() if isinstance(value, bool) else str(value)]
        if config.trainer.get("accelerator") not in (None, "auto", defaults.trainer.get("accelerator")):
            args += ["--trainer.accelerator", str(config.trainer.accelerator)]
        return mnist_command(*args)


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and the exceptions behind it (its causes and contexts), each once."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        yield current
        seen.add(id(current))
        current = current.__cause__ or current.__context__


def _without_callbacks_that_need_a_logger(callbacks: list[Any]) -> list[Any]:
    """`--trainer.logger false`: Lightning's callbacks that refuse a trainer without a logger step aside, each
    named once, instead of stopping the run."""
    dropped = sorted({type(c).__name__ for c in callbacks if isinstance(c, NEED_A_LOGGER)})
    for name in dropped:
        rank_zero_warn(f"{name} needs a logger: left out of this run (--trainer.logger false).")
    return [c for c in callbacks if not isinstance(c, NEED_A_LOGGER)]


def _user_mistake_in(err: BaseException) -> UserInputError | None:
    """The project's own bad-input error behind `err` (its cause or context), if there is one."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        if isinstance(current, UserInputError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def check_net_takes_num_classes(config: Namespace) -> None:
    """The CLI sets the net's `num_classes` from the data: refuse, naming the fix, a net class without it."""
    net = config.get("model", Namespace()).get("init_args", Namespace()).get("net")
    class_path = net.get("class_path") if isinstance(net, Namespace) else None
    if not class_path:
        return
    module_name, _, name = str(class_path).rpartition(".")
    try:
        target = getattr(importlib.import_module(module_name), name)
        parameters = inspect.signature(target).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return  # jsonargparse has accepted the class path, so this cannot happen short of a race: nothing to add
    takes = "num_classes" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not takes:
        raise UserInputError(
            f"model.net {class_path} takes no num_classes argument: the CLI gives every net the data's number of "
            f"classes. Add `num_classes: int = 10` to {name}.__init__ and size its last layer with it.")
    if list(parameters) == ["num_classes"]:
        # LightningCLI 2.6 records a linked argument only inside the net's other init args, and asserts
        # (pytorch_lightning.cli._set_dict_nested) when there are none; say so instead of its AssertionError.
        raise UserInputError(
            f"model.net {class_path} takes num_classes and nothing else, a case LightningCLI 2.6 cannot save the "
            f"config of: give {name}.__init__ one more argument (e.g. `width: int = 8`), even an unused one.")


class _DropAdverts(logging.Filter):
    """Lightning's "Tip: ... try installing litlogger/litmodels" lines: advertising, not information."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip: For seamless cloud" not in record.getMessage()


@contextmanager
def quiet_console() -> Iterator[None]:
    """Silence the Lightning messages in QUIET and its cloud tips for one command, not process-wide; and
    the traceback of TensorBoard's writer thread on a full disk, which the command itself reports in one
    line (the writer raises the same error again in the main thread)."""
    lightning_info = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    adverts = _DropAdverts()
    lightning_info.addFilter(adverts)
    previous_hook = threading.excepthook

    def quiet_on_full_disk(args: threading.ExceptHookArgs) -> None:
        if not (isinstance(args.exc_value, OSError) and args.exc_value.errno in DISK_FULL):
            previous_hook(args)

    threading.excepthook = quiet_on_full_disk
    try:
        with warnings.catch_warnings():
            for message in QUIET:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        threading.excepthook = previous_hook
        lightning_info.removeFilter(adverts)


