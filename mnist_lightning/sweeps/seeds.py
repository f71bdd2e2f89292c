"""The `seeds` command: one config fitted with several seeds, each run's model tested, mean ± std printed.

    python -m mnist_lightning seeds --config configs/mlp_best.yaml --seeds 0 1 2 --data.data_dir D

Each seed is an ordinary `fit` run in this process, then a `test` of its best checkpoint by val/acc (or of its
last.ckpt where the fit ran no validation, the refit); docs/experiments.md, "Seed repeats".
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mnist_lightning.callbacks.resume import ResumeCheckpoint, best_checkpoint
from mnist_lightning.cli import refit
from mnist_lightning.cli.cli import MNISTLightningCLI
from mnist_lightning.errors import UserInputError
from mnist_lightning.sweeps.fit_options import config_args, in_process, parse_fit
from mnist_lightning.sweeps.tables import format_table


@dataclass(frozen=True)
class Stats:
    """Mean, sample standard deviation (n-1; None for one value), min and max."""

    mean: float
    std: float | None
    low: float
    high: float

    def mean_std(self, scale: float = 1.0, digits: int = 2) -> str:
        std = "n/a" if self.std is None else f"{self.std * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {std}"

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        return (f"{self.mean_std(scale, digits)}  (min {self.low * scale:.{digits}f}, "
                f"max {self.high * scale:.{digits}f})")


def summarize(values: Sequence[float]) -> Stats:
    """Run-to-run statistics of per-seed results (sample std: the seeds are a sample of all seeds)."""
    if not values:
        raise ValueError("no values to summarize")
    std = statistics.stdev(values) if len(values) > 1 else None
    return Stats(statistics.mean(values), std, min(values), max(values))


@dataclass(frozen=True)
class SeedRun:
    seed: int
    val_acc: float | None  # None: the run had no validation (refit-last)
    test_acc: float
    fit_seconds: float
    run_dir: str
    protocol: str = refit.BEST_VAL  # which checkpoint was tested (mnist_lightning/cli/refit.py)


def run_seed(seed: int, fit_args: Sequence[str]) -> SeedRun:
    """`fit` with this seed, then `test` on its model, both in this process: the best checkpoint by val/acc,
    or, where the fit ran no validation (`--data.val_size 0`, the refit), its last.ckpt."""
    start = time.perf_counter()
    with in_process():
        fit = MNISTLightningCLI(args=["fit", *fit_args, "--seed_everything", str(seed)])
    seconds = time.perf_counter() - start
    protocol = refit.protocol_of(fit.datamodule, fit.trainer.limit_val_batches)
    val_acc: float | None = None
    if protocol == refit.BEST_VAL:
        checkpoint = best_checkpoint(fit.trainer)
        if checkpoint is None or checkpoint.monitor != "val/acc" or checkpoint.best_model_score is None:
            raise UserInputError("seeds tests the best checkpoint by val/acc: the config needs the default config's "
                                 "ModelCheckpoint (monitor val/acc) and at least one validation (or --data.val_size 0, "
                                 "the refit, which tests last.ckpt).")
        model_path, val_acc = checkpoint.best_model_path, float(checkpoint.best_model_score)
    else:
        model_path = str(ResumeCheckpoint.path(fit.trainer))
    test_args = shlex.split(fit.test_command(model_path))[3:]  # after `<python> -m mnist_lightning`
    progress = fit.config.fit.trainer.get("enable_progress_bar")
    test_args += ["--verbose", "false", "--trainer.enable_progress_bar", json.dumps(progress is not False)]
    with in_process():
        test = MNISTLightningCLI(args=test_args)
    return SeedRun(seed, val_acc, float(test.trainer.callback_metrics["test/acc"]), seconds, str(fit.trainer.log_dir),
                   protocol)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def _val_stats(runs: Sequence[SeedRun], text: Callable[[Stats], str]) -> str:
    """The validation accuracy's statistics, over the runs that validated ("-" where none did)."""
    values = [r.val_acc for r in runs if r.val_acc is not None]
    return text(summarize(values)) if values else "- (no validation: refit-last)"


def seeds_table(runs: Sequence[SeedRun]) -> str:
    """Per seed: the protocol (`best-val`: best checkpoint by val/acc; `refit-last`: all training images, no
    validation, last.ckpt), the accuracies, the fit time and the run folder; then mean ± std."""
    rows = [[str(r.seed), r.protocol, _percent(r.val_acc), _percent(r.test_acc), f"{r.fit_seconds:.1f}", r.run_dir]
            for r in runs]
    table = format_table(["seed", "protocol", "val acc %", "test acc %", "fit s", "run folder"], rows)
    test, secs = (summarize([getattr(r, k) for r in runs]) for k in ("test_acc", "fit_seconds"))
    val = _val_stats(runs, lambda stats: stats.text(100))
    return (f"{table}\n\nval acc %   {val}\ntest acc %  {test.text(100)}\nfit s       {secs.text(1, 1)}")


def seeds_main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_lightning seeds", allow_abbrev=False,
        description="Fit one config with several seeds, test each run's model (its best checkpoint by val/acc, or "
                    "last.ckpt with --data.val_size 0), print mean ± std; other options are fit options.")
    parser.add_argument("--config", action="append", required=True, help="run config (repeatable, as for fit)")
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="e.g. --seeds 0 1 2")
    args, fit_args = parser.parse_known_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        raise UserInputError(f"--seeds repeats a seed ({' '.join(map(str, args.seeds))}): each seed runs once.")
    if any(a.split("=", 1)[0] == "--seed_everything" for a in fit_args):
        raise UserInputError("seeds sets seed_everything itself: drop --seed_everything and list the seeds in --seeds.")
    base_args = [*config_args(args.config), *fit_args]
    for seed in args.seeds:  # every mistake before the first fit
        try:
            parse_fit([*base_args, "--seed_everything", str(seed)])
        except UserInputError as err:
            raise UserInputError(f"the fit options of seeds: {err}") from None
    runs = []
    for seed in args.seeds:
        runs.append(run_seed(seed, base_args))
        r = runs[-1]
        val = "-" if r.val_acc is None else f"{100 * r.val_acc:.2f}%"
        print(f"seed {seed} ({r.protocol}): val {val}  test {100 * r.test_acc:.2f}%  "
              f"fit {r.fit_seconds:.1f} s  {r.run_dir}", flush=True)
    print()
    print(seeds_table(runs))
    test = summarize([r.test_acc for r in runs])
    val = _val_stats(runs, lambda stats: stats.mean_std(100)).split(" (")[0]
    protocols = " ".join(dict.fromkeys(r.protocol for r in runs))
    print("\nAs a row of docs/results.md's table "
          "(config | protocol | seeds | val acc % | test acc % | test min-max | fit s):")
    print(f"| {' '.join(args.config)} | {protocols} | {' '.join(map(str, args.seeds))} | {val} | "
          f"{test.mean_std(100)} | {100 * test.low:.2f}-{100 * test.high:.2f} | "
          f"{statistics.mean(r.fit_seconds for r in runs):.0f} |")
