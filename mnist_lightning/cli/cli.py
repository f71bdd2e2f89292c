"""The LightningCLI subclass: MNISTClassifier + MNISTDataModule, with hooks that hand each rail to its module.

    python -m mnist_lightning fit                                  # mnist_lightning/default.yaml
    python -m mnist_lightning fit --config configs/seed.yaml       # the tutorial, exactly
    python -m mnist_lightning fit --model.net my_nets.SmallCNN --model.optimizer torch.optim.SGD
    python -m mnist_lightning test --ckpt_path lightning_logs/version_0/checkpoints/last.ckpt
    python -m mnist_lightning fit --config lightning_logs/version_0/config.yaml --ckpt_path last

Each hook delegates: the project's arguments (`arguments.py`), run folders (`runs.py`), what a
checkpoint fixes (`checkpoint_settings.py`), the Trainer's always-on rails (`trainer_setup.py`),
failures as one line (`failures.py`), what is printed (`console.py`).
"""

from __future__ import annotations

import copy
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

import torch
from jsonargparse import Namespace
from pytorch_lightning.cli import LightningCLI

from mnist_lightning.callbacks.resume import checkpoint_dir
from mnist_lightning.checkpoints.files import load_checkpoint_file, remove_superseded_checkpoints
from mnist_lightning.checkpoints.trust import check_saved_parts
from mnist_lightning.cli import checkpoint_settings, console, failures, trainer_setup
from mnist_lightning.cli.arguments import OneLineErrorParser, add_project_arguments, check_parsed
from mnist_lightning.cli.runs import RunConfigSaver, choose_run_folder, refuse_earlier_run, resolve_ckpt_path
from mnist_lightning.data.datamodule import MNISTDataModule
from mnist_lightning.models.classifier import MNISTClassifier
from mnist_lightning.models.fast import FastMNISTClassifier, quiet_dataloader_iter_warnings

# Shipped inside the package, so an installed wheel runs with the same defaults as the checkout.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "default.yaml"
LIGHTNING_SUBCOMMANDS = ("fit", "validate", "test", "predict")


class MNISTLightningCLI(LightningCLI):
    """LightningCLI for MNISTClassifier (or a subclass, e.g. FastMNISTClassifier) + MNISTDataModule.

    The parts (net, optimizer, schedule) are the model's init arguments, given as class paths;
    LightningCLI's own `--optimizer`/`--lr_scheduler` are off, so each part is set in one place.
    The default config applies under every subcommand; each run gets a folder of its own; a
    checkpoint's saved parts are checked before anything is built from them; evaluation logs into the
    checkpoint's own run and inherits its data settings; a resume refuses settings that differ.

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
                parser_class=OneLineErrorParser,
                save_config_callback=RunConfigSaver,
                parser_kwargs={sub: {"default_config_files": [str(DEFAULT_CONFIG)]} for sub in LIGHTNING_SUBCOMMANDS},
                trainer_defaults={"callbacks": [*trainer_setup.always_on_callbacks(resume_hint), *(callbacks or [])]},
                args=args,
                run=run,
            )
        except BaseException as err:
            mistake = failures.after_failure(err, self.claimed_run_dir, getattr(self, "trainer", None))
            if mistake is not None:
                raise mistake from None
            raise

    def add_arguments_to_parser(self, parser: Any) -> None:
        add_project_arguments(parser)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse, then check the values and the checkpoint before LightningCLI reads its hyperparameters."""
        super().parse_arguments(parser, args)
        argv = [str(a) for a in (sys.argv[1:] if args is None else args)] if not isinstance(args, dict) else []
        self.on_command_line = checkpoint_settings.NamedOnCommandLine.of(argv)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        check_parsed(config)
        ckpt_path = config.ckpt_path = resolve_ckpt_path(subcommand, config)
        if ckpt_path and ckpt_path not in ("last", "best", "hpc"):
            self.checkpoint = load_checkpoint_file(ckpt_path)  # raises CheckpointError naming the file
            # Before LightningCLI merges the saved parts into the config and builds them.
            check_saved_parts(self.checkpoint, self.model_class, self.datamodule_class)
        self.parsed = copy.deepcopy(self.config)

    def before_instantiate_classes(self) -> None:
        threads = self.config[self.subcommand].get("torch_threads")
        if threads is not None:
            torch.set_num_threads(threads)
        if self.checkpoint is not None:
            assert self.parsed is not None
            self.config = checkpoint_settings.take_settings_from_checkpoint(
                self.checkpoint, self.parser, self.config, self.parsed, self.subcommand,
                self.defaults(self.subcommand), self._datamodule_class, self.on_command_line)
        choose_run_folder(self)

    # A subcommand's defaults, per CLI class: the same for every CLI of a process (a parse costs 0.2-0.3 s,
    # and a sweep or `seeds` builds one CLI per trial).
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
        except (MemoryError, RuntimeError, ValueError, ImportError) as err:
            mistake = failures.building_failed(err)
            if mistake is not None:
                raise mistake from None
            raise
        if self.subcommand == "fit":
            trainer_setup.check_model_fits_in_memory(self.model)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer_config = self.config_init[self.subcommand].get("trainer") or {}
        config = self.config[self.subcommand]
        plugins = trainer_setup.trainer_plugins(trainer_config)
        callbacks = trainer_setup.trainer_callbacks(trainer_config, self.subcommand, self.datamodule,
                                                    config.get("predictions_csv"), config.get("ckpt_path"))
        try:
            return super().instantiate_trainer(plugins=plugins, callbacks=callbacks, **kwargs)
        except (ValueError, TypeError, RuntimeError, ImportError) as err:
            mistake = failures.trainer_refused(err)
            if mistake is not None:
                raise mistake from None
            raise

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

    def validate(self, model: Any, verbose: bool = True, **kwargs: Any) -> None:
        """`trainer.validate`, its results table printed by `console.print_results` (without the `step` row)."""
        self._print_results(self.trainer.validate(model, verbose=False, **kwargs), "validate", verbose)

    def test(self, model: Any, verbose: bool = True, **kwargs: Any) -> None:
        """`trainer.test`, its results table printed by `console.print_results` (without the `step` row)."""
        self._print_results(self.trainer.test(model, verbose=False, **kwargs), "test", verbose)

    def _print_results(self, results: list[dict[str, float]], stage: str, verbose: bool) -> None:
        if verbose and self.trainer.is_global_zero:
            console.print_results(results, stage)

    def after_fit(self) -> None:
        if self.trainer.is_global_zero:
            console.report_fit(self.trainer, self.datamodule, self.checkpoint, self.test_command)

    def test_command(self, ckpt_path: str) -> str:
        """The `test` command for a checkpoint of this run, as `fit` prints it (console.test_command)."""
        return console.test_command(ckpt_path, self.config[self.subcommand], self.defaults("test"))
