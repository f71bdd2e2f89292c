"""Sweeps and seed repeats through the real entry point (`python -m mnist_lightning sweep|seeds`) on tiny data.

Most run the entry point in this process (`run_cli`); a real process is started only where the
process is the subject: a worker killed with SIGKILL, two workers side by side, and the printed
`Reproduce it with:` command pasted through a shell.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
import yaml
from conftest import PROJECT_ROOT, TINY_ARGS, probe_env, run_cli, start_forked
from optuna.distributions import CategoricalDistribution
from pytorch_lightning.callbacks import Callback

from mnist_lightning.errors import UserInputError
from mnist_lightning.sweeps.command import sweep_main
from mnist_lightning.sweeps.fit_options import cli_value, parse_fit
from mnist_lightning.sweeps.sampler import TrialSeededSampler
from mnist_lightning.sweeps.seeds import seeds_main, summarize
from mnist_lightning.sweeps.sweep_file import load_sweep

SEED_CONFIG = PROJECT_ROOT / "configs" / "seed.yaml"


def write_sweep(folder: Path, name: str = "tiny", **fields: object) -> Path:
    """A sweep file over the tutorial config: 3 trials, no pruning, a 1 s heartbeat (stale after 3 s)."""
    spec = {
        "configs": [str(SEED_CONFIG)],
        "n_trials": 3,
        "pruner": "optuna.pruners.NopPruner",
        "heartbeat": {"interval": 1, "grace_period": 3},
        "search_space": {
            "model.optimizer.init_args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "model.net.init_args.hidden_sizes": {"type": "categorical", "choices": [[8], [16]]},
        },
    } | fields
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# For tests whose subject is not the search: one value to check before the first trial (each check
# parses a whole fit command line, seconds of CPU), the same net for every trial.
ONE_POINT = {"model.net.init_args.hidden_sizes": {"type": "categorical", "choices": [[8]]}}


def fit_args(data: Path, epochs: int = 1) -> list[str]:
    """Fit options for every trial: tiny data, one thread, `epochs` epochs (one is enough for most claims)."""
    return ["--data.data_dir", str(data), *TINY_ARGS, "--torch_threads", "1", "--trainer.max_epochs", str(epochs)]


def load(cwd: Path, name: str = "tiny") -> optuna.Study:
    storage = f"sqlite:///{cwd / 'lightning_logs' / 'sweeps' / name / 'study.db'}"
    return optuna.load_study(study_name=name, storage=storage)


def states(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.trials)


def run_folders(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / "lightning_logs").glob("version_*"))


def got_line(output: str) -> tuple[int, int]:
    """(correct, total) from the tutorial's closing line of `test`, e.g. 'Got 190 / 200 with accuracy 95.00'."""
    (found,) = re.findall(r"^Got (\d+) / (\d+) with accuracy [\d.]+$", output, re.M)
    return int(found[0]), int(found[1])


class HoldRun(Callback):
    """Test hook, added by class path: holds the fit of the run folder named by $HOLD_RUN (e.g. version_1)
    after its first training batch, until the process is killed, so a test can kill a trial mid-training
    without racing it. Without $HOLD_RUN (the restarted sweep) it does nothing."""

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object, batch: object,
                           batch_idx: int) -> None:
        if Path(trainer.log_dir or "").name == os.environ.get("HOLD_RUN"):
            while True:
                time.sleep(0.5)


class AwaitPeer(Callback):
    """Test hook, added by class path: a fit starts only once two worker processes have each started one
    (marks in $AWAIT_PEER_DIR; 120 s at most), so neither worker can finish the study before the other is
    up, however slowly one of them starts on a loaded machine. Without $AWAIT_PEER_DIR it does nothing."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        folder = os.environ.get("AWAIT_PEER_DIR")
        if not folder:
            return
        (Path(folder) / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(Path(folder).iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)


# ------------------------------------------------------------------------------------------- the sweep file
@pytest.mark.parametrize(("fields", "named"), [
    ({"serach_space": ONE_POINT}, ["serach_space"]),  # a key the sweep file does not have
    ({"n_trails": 3}, ["n_trails", "not accepted"]),
    ({"n_trials": "many"}, ["n_trials", "PositiveInt"]),
    ({"n_trials": 0}, ["n_trials", "PositiveInt"]),
    ({"heartbeat": {"intervall": 1}}, ["heartbeat", "intervall"]),
    ({"direction": "maximise"}, ["direction", "maximise"]),
    ({"search_space": {"model.optimizer.init_args.lr": {"type": "float", "low": 0.1, "high": 0.01}}},
     ["search_space model.optimizer.init_args.lr", "low <= high"]),
    ({"search_space": {"model.optimizer.init_args.lr": {"type": "uniform", "low": 0.1, "high": 1}}},
     ["search_space model.optimizer.init_args.lr", "needs `type: float|int|categorical`"]),
    ({"search_space": {"data.batch_size": {"type": "int", "low": 32, "high": 64, "choices": [1]}}},
     ["search_space data.batch_size", "'choices' is not accepted"]),
    ({"search_space": {"data.batch_size": {"type": "int", "low": 32, "high": 64.5}}},
     ["search_space data.batch_size", "high"]),
    ({"search_space": {}}, ["search_space must map fit options"]),
    ({"configs": ["no_such.yaml"]}, ["configs", "no_such.yaml", "does not exist"]),
    ({"pruner": {"class_path": "optuna.pruners.MedainPruner"}}, ["pruner", "MedainPruner"]),
    ({"pruner": {"type": "median"}}, ["pruner", "'type': 'median'", "class path with init args"]),  # the old format
    ({"pruner": {"class_path": "optuna.pruners.PercentilePruner", "init_args": {"percentile": 200}}},
     ["pruner optuna.pruners.PercentilePruner", "Percentile must be between 0 and 100"]),  # Optuna's own check
    ({"sampler": {"class_path": "optuna.samplers.TPESampler", "init_args": {"sed": 0}}}, ["sampler", "'sed'"]),
    ({"sampler": "optuna.pruners.MedianPruner"}, ["sampler", "MedianPruner", "BaseSampler"]),  # the wrong kind
])
def test_sweep_file_mistakes_are_named(tmp_path: Path, fields: dict, named: list[str]) -> None:
    with pytest.raises(UserInputError) as caught:
        load_sweep(write_sweep(tmp_path, **fields))
    message = str(caught.value)
    assert message.startswith(f"sweep file {tmp_path / 'tiny.yaml'}: ") and "\n" not in message, message
    assert all(fragment in message for fragment in named), message


def test_sweep_file_sampler_and_pruner_are_optuna_class_paths(tmp_path: Path) -> None:
    """Short class names resolve as in any class path; a seeded sampler is seeded per trial; a class the file names
    takes only the init args the file gives it (none of the default pruner's), and a left-out part its default."""
    sweep = load_sweep(write_sweep(tmp_path, sampler={"class_path": "RandomSampler", "init_args": {"seed": 3}},
                                   pruner={"class_path": "PercentilePruner", "init_args": {"percentile": 25.0}}))
    assert isinstance(sweep.sampler, TrialSeededSampler) and isinstance(sweep.pruner, optuna.pruners.PercentilePruner)
    draws = []
    for _ in range(2):  # the same draws again: each trial's sampler is seeded by the sweep's seed and its number
        study = optuna.create_study(sampler=load_sweep(tmp_path / "tiny.yaml").sampler)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
        draws.append([t.params["x"] for t in study.trials])
    assert draws[0] == draws[1] and len(set(draws[0])) == 3
    threshold = load_sweep(write_sweep(tmp_path, pruner={"class_path": "ThresholdPruner", "init_args": {"lower": 2}}))
    trial = optuna.create_study(pruner=threshold.pruner).ask()
    trial.report(1.0, step=0)
    assert trial.should_prune()  # from step 0, ThresholdPruner's own n_warmup_steps: not the default pruner's 1
    assert isinstance(load_sweep(write_sweep(tmp_path, pruner=None)).pruner, optuna.pruners.MedianPruner)


def test_sweep_command_refuses_a_trial_count_its_type_refuses(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="--n_trials.*PositiveInt"):
        sweep_main(["--config", str(write_sweep(tmp_path)), "--n_trials", "0"])


def test_shipped_sweep_files_load() -> None:
    tutorial = load_sweep(PROJECT_ROOT / "configs" / "sweeps" / "tutorial.yaml")
    assert tutorial.configs == [SEED_CONFIG]
    assert set(tutorial.search_space) == {"model.optimizer.init_args.lr", "model.net.init_args.hidden_sizes",
                                          "data.batch_size"}
    assert isinstance(tutorial.pruner, optuna.pruners.MedianPruner) and isinstance(tutorial.sampler, TrialSeededSampler)
    for name in ("mlp", "mlp_99", "mlp_deskew"):
        sweep = load_sweep(PROJECT_ROOT / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.configs == [PROJECT_ROOT / "configs" / "mlp_best.yaml"] and sweep.search_space, name
    augment = load_sweep(PROJECT_ROOT / "configs" / "sweeps" / "mlp_augment.yaml")
    assert isinstance(augment.pruner, optuna.pruners.NopPruner)


@pytest.mark.slow
def test_shipped_sweep_files_search_options_that_fit_accepts() -> None:
    """Every key of a shipped search space is a fit option the CLI knows, with a value it takes: a stale key
    (model.lr, from before the optimizer became a part) would otherwise surface only when someone runs it.
    One parse per set of run configs, each key at its first choice or its low end."""
    by_configs: dict[tuple[Path, ...], dict[str, object]] = {}
    for path in sorted((PROJECT_ROOT / "configs" / "sweeps").glob("*.yaml")):
        sweep = load_sweep(path)
        values = by_configs.setdefault(tuple(sweep.configs), {})
        for key, space in sweep.search_space.items():
            values[key] = space.choices[0] if isinstance(space, CategoricalDistribution) else space.low
    # configs/seed.yaml (tutorial.yaml), configs/mlp_best.yaml (mlp*.yaml) and mlp_best + mlp_augment (mlp_augment.yaml)
    assert len(by_configs) == 3
    for configs, values in by_configs.items():
        args = [a for config in configs for a in ("--config", str(config))]
        parse_fit([*args, *(a for key, value in values.items() for a in (f"--{key}", cli_value(value)))])


@pytest.mark.slow
def test_unknown_search_space_key_is_refused_before_any_trial(shared_tiny_data: Path, tmp_path: Path) -> None:
    space = {"model.net.init_args.hiden_sizes": {"type": "categorical", "choices": [[8]]}}
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path, search_space=space)), *fit_args(shared_tiny_data),
                     cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert (result.stderr.startswith("error: search_space model.net.init_args.hiden_sizes")
            and "not accepted" in result.stderr)
    assert not (tmp_path / "lightning_logs").exists()  # no run folder, no study


# ------------------------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_sweep_runs_each_trial_as_a_fit_run_and_best_yaml_reproduces_the_best(shared_tiny_data: Path,
                                                                              tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, n_trials=2)
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 2
    run_dirs = [str(tmp_path / f"lightning_logs/version_{i}") for i in range(2)]
    assert sorted(t.user_attrs["run_dir"] for t in study.trials) == run_dirs
    for trial in study.trials:  # an ordinary run each, trained with the trial's own parameters
        run = tmp_path / trial.user_attrs["run_dir"]
        assert (tmp_path / trial.user_attrs["best_checkpoint"]).is_file() and list(run.glob("events.out.tfevents.*"))
        saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
        assert saved["optimizer"]["init_args"]["lr"] == trial.params["model.optimizer.init_args.lr"]
        assert str(saved["net"]["init_args"]["hidden_sizes"]) == trial.params["model.net.init_args.hidden_sizes"]
    assert len(re.findall(r"^\d+\s+COMPLETE\s", result.stdout, re.M)) == 2

    best = yaml.safe_load((tmp_path / "lightning_logs" / "sweeps" / "tiny" / "best.yaml").read_text())
    assert best["trainer"]["logger"]["init_args"]["version"] is None
    command = re.search(r"Reproduce it with: (.+)", result.stdout).group(1)
    assert shlex.split(command)[1:] == ["-m", "mnist_lightning", "fit", "--config",
                                        "lightning_logs/sweeps/tiny/best.yaml"]
    # A real shell and process: the subject is the printed command, pasted as it is.
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    refit = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refit.returncode == 0, refit.stderr[-3000:]
    assert run_folders(tmp_path)[-1] == "version_2"
    weights = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for d in (study.best_trial.user_attrs["run_dir"], "lightning_logs/version_2")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same training, bit for bit

    summary = run_cli("sweep", "--config", str(sweep), "--summary", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert len(re.findall(r"^\d+\s+COMPLETE\s", summary.stdout, re.M)) == 2 and len(run_folders(tmp_path)) == 3


@pytest.mark.slow
def test_sweep_over_the_optimizer_class_and_a_net_argument(shared_tiny_data: Path, tmp_path: Path) -> None:
    """A class path is a categorical choice like any other (`--model.optimizer torch.optim.SGD`), and a
    net's init arg a float: each trial trains with the optimizer class and net it names, and keeps the
    run config's learning rate across the class change."""
    space = {"model.optimizer": {"type": "categorical", "choices": ["torch.optim.Adam", "torch.optim.SGD"]},
             "model.net.init_args.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}}
    # Sampler seed 2: its two trials draw Adam, then SGD (the sampler is reseeded per trial, so this is fixed).
    sweep = write_sweep(tmp_path, n_trials=2, search_space=space,
                        sampler={"class_path": "optuna.samplers.TPESampler", "init_args": {"seed": 2}})
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    trials = load(tmp_path).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 2
    assert sorted(t.params["model.optimizer"] for t in trials) == ["torch.optim.Adam", "torch.optim.SGD"]
    for trial in trials:
        run = tmp_path / trial.user_attrs["run_dir"]
        saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
        assert saved["optimizer"]["class_path"] == trial.params["model.optimizer"]
        assert saved["optimizer"]["init_args"]["lr"] == 0.001  # configs/seed.yaml's, whatever the class
        assert saved["net"]["init_args"]["dropout"] == trial.params["model.net.init_args.dropout"]
        last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        (group, *_) = last["optimizer_states"][0]["param_groups"]
        sgd = trial.params["model.optimizer"] == "torch.optim.SGD"
        assert ("momentum" in group, "betas" in group) == (sgd, not sgd), group  # trained by the class it names
        assert last["hyper_parameters"]["net"]["init_args"]["dropout"] == trial.params["model.net.init_args.dropout"]
    assert re.search(r"^Best trial \d: .*model\.optimizer=torch\.optim\.(Adam|SGD)", result.stdout, re.M)


@pytest.mark.slow
def test_killed_sweep_started_again_finishes_without_counting_a_trial_twice(shared_tiny_data: Path,
                                                                            tmp_path: Path) -> None:
    # The same command both times; HoldRun (off in the restart) keeps trial 1 mid-training until the kill.
    args = ["sweep", "--config", str(write_sweep(tmp_path, n_trials=2, search_space=ONE_POINT)),
            *fit_args(shared_tiny_data), "--trainer.callbacks+=test_experiments.HoldRun"]
    # A real process (forked with the project imported): the subject is a worker killed with SIGKILL.
    first = start_forked(*args, cwd=tmp_path, log=tmp_path / "first.log", env={**probe_env(), "HOLD_RUN": "version_1"})
    try:
        deadline = time.monotonic() + 120
        running = None
        while running is None and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            try:  # wait until trial 1 has started its fit (trial 0 finished before it)
                running = next((t for t in load(tmp_path).get_trials(states=(optuna.trial.TrialState.RUNNING,))
                                if t.number == 1 and "run_dir" in t.user_attrs), None)
            except Exception:  # the study is not created yet
                pass
        assert running is not None, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group, mid-trial
        first.wait()
    finished_before = load(tmp_path).trials[0]

    # The test folder (test_experiments.HoldRun) is on this process's sys.path, as conftest's.
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(tmp_path)
    assert states(study) == {"COMPLETE": 2, "FAIL": 1}
    assert study.trials[1].state.name == "FAIL"  # the killed one, failed by its stale heartbeat
    assert study.trials[0].datetime_complete == finished_before.datetime_complete  # kept, not run again
    run_dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(run_dirs)) == 3 and len(run_folders(tmp_path)) == 3


@pytest.mark.slow
def test_hopeless_trial_is_stopped_and_recorded_as_pruned(shared_tiny_data: Path, tmp_path: Path) -> None:
    # ThresholdPruner(lower=2): no accuracy reaches 2, so the first report prunes, deterministically.
    sweep = write_sweep(tmp_path, n_trials=1, search_space=ONE_POINT,
                        pruner={"class_path": "optuna.pruners.ThresholdPruner", "init_args": {"lower": 2.0}})
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data, epochs=3), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load(tmp_path).trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    last = torch.load(tmp_path / trial.user_attrs["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # stopped after the first of 3 epochs
    assert "No trial has completed yet: best.yaml not written." in result.stdout


@pytest.mark.slow
def test_diverged_trial_is_pruned_not_a_sweep_error(shared_tiny_data: Path, tmp_path: Path) -> None:
    sweep = write_sweep(tmp_path, n_trials=1, search_space=ONE_POINT)
    result = run_cli("sweep", "--config", str(sweep), *fit_args(shared_tiny_data),
                     "--model.optimizer.init_args.lr", ".inf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load(tmp_path).trials
    assert trial.state.name == "PRUNED" and trial.user_attrs["diverged"]


@pytest.mark.slow
def test_two_workers_share_one_study(shared_tiny_data: Path, tmp_path: Path) -> None:
    # Real processes (forked with the project imported): the subject is two workers side by side. AwaitPeer
    # makes each worker's first trial wait for the other worker's, so both are up before either could finish
    # the study alone.
    peers = tmp_path / "peers"
    peers.mkdir()
    args = ["sweep", "--config", str(write_sweep(tmp_path, n_trials=3, search_space=ONE_POINT)),
            *fit_args(shared_tiny_data), "--trainer.callbacks+=test_experiments.AwaitPeer"]
    env = {**probe_env(), "AWAIT_PEER_DIR": str(peers)}
    workers = [start_forked(*args, cwd=tmp_path, log=tmp_path / f"worker{i}.log", env=env) for i in range(2)]
    for i, worker in enumerate(workers):
        try:
            assert worker.wait(timeout=180) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    study = load(tmp_path)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 3  # the study's total, not 3 per worker
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")
    run_dirs = [t.user_attrs["run_dir"] for t in study.trials if "run_dir" in t.user_attrs]
    assert len(set(run_dirs)) == len(run_dirs) == len(run_folders(tmp_path))  # a folder of its own per trial
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both did some of the work


# ------------------------------------------------------------------------------------------- seeds
def test_seed_statistics_for_known_values() -> None:
    stats = summarize([0.95, 0.96, 0.97])
    assert stats.mean == pytest.approx(0.96) and stats.std == pytest.approx(0.01)  # sample std (n - 1)
    assert (stats.low, stats.high) == (0.95, 0.97)
    assert stats.text(100) == "96.00 ± 1.00  (min 95.00, max 97.00)"
    assert summarize([0.9]).std is None


def test_seeds_refuses_a_repeated_seed() -> None:
    with pytest.raises(UserInputError, match="repeats a seed"):
        seeds_main(["--config", str(SEED_CONFIG), "--seeds", "0", "0"])


@pytest.mark.slow
def test_seeds_fits_and_tests_each_seed_and_prints_mean_and_std(shared_tiny_data: Path, tmp_path: Path) -> None:
    result = run_cli("seeds", "--config", str(SEED_CONFIG), "--seeds", "0", "1", *fit_args(shared_tiny_data),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^(\d)\s+best-val\s+(\d+\.\d\d)\s+(\d+\.\d\d)\s+[\d.]+\s+(lightning_logs/version_\d)$",
                      result.stdout, re.M)
    assert ([r[0] for r in rows] == ["0", "1"]
            and [r[3] for r in rows] == ["lightning_logs/version_0", "lightning_logs/version_1"])
    val_accs, test_accs, weights = [], [], []
    for seed, val_acc, test_acc, run in rows:
        assert yaml.safe_load((tmp_path / run / "config.yaml").read_text())["seed_everything"] == int(seed)
        # The row's val acc is its best checkpoint's; its test acc what an independent `test` of it reports.
        (best,) = (tmp_path / run / "checkpoints").glob("epoch*-val_acc*.ckpt")
        best_val = float(re.search(r"val_acc([\d.]+)\.ckpt$", best.name).group(1))
        assert val_acc == f"{100 * best_val:.2f}", (best.name, val_acc)
        test = run_cli("test", "--ckpt_path", str(best), "--data.data_dir", str(shared_tiny_data),
                       "--data.verify", "false", "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                       cwd=tmp_path)
        assert test.returncode == 0, test.stderr[-3000:]
        correct, total = got_line(test.stdout)
        assert total == 200 and test_acc == f"{100 * correct / total:.2f}", (test.stdout[-1000:], test_acc)
        val_accs.append(best_val)
        test_accs.append(correct / total)
        weights.append(torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # each seed trains its own net

    def stats_line(values: list[float]) -> str:  # computed here, not with the module's own summarize
        mean, std = statistics.mean(values), statistics.stdev(values)
        return f"{100 * mean:.2f} ± {100 * std:.2f}  (min {100 * min(values):.2f}, max {100 * max(values):.2f})"

    assert re.search(rf"^val acc %\s+{re.escape(stats_line(val_accs))}$", result.stdout, re.M), result.stdout[-1500:]
    assert re.search(rf"^test acc %\s+{re.escape(stats_line(test_accs))}$", result.stdout, re.M), result.stdout[-1500:]


@pytest.mark.slow
def test_seeds_runs_the_refit_tests_last_ckpt_and_marks_the_protocol(shared_tiny_data: Path, tmp_path: Path) -> None:
    """`seeds ... --data.val_size 0`: each seed trains on every image without validation; its row is marked
    refit-last, has no validation accuracy, and its test accuracy is that of the run's last.ckpt."""
    args = [a for a in fit_args(shared_tiny_data) if a not in ("--data.val_size", "100")]
    result = run_cli("seeds", "--config", str(SEED_CONFIG), "--seeds", "0", *args, "--data.val_size", "0",
                     "--model.optimizer.init_args.lr", "1e-4", cwd=tmp_path)  # slow learning: not 100% on tiny data
    assert result.returncode == 0, result.stderr[-3000:]
    (row,) = re.findall(r"^0\s+(\S+)\s+(\S+)\s+(\d+\.\d\d)\s+[\d.]+\s+(lightning_logs/version_0)$", result.stdout, re.M)
    protocol, val_acc, test_acc, run = row
    assert (protocol, val_acc) == ("refit-last", "-")
    assert re.search(r"^val acc %\s+- \(no validation: refit-last\)$", result.stdout, re.M), result.stdout[-1500:]
    assert re.search(r"^\| .*seed\.yaml \| refit-last \| 0 \| - \| ", result.stdout, re.M), result.stdout[-800:]
    last = tmp_path / run / "checkpoints" / "last.ckpt"
    assert sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    test = run_cli("test", "--ckpt_path", str(last), "--data.data_dir", str(shared_tiny_data), "--data.verify", "false",
                   "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-3000:]
    correct, total = got_line(test.stdout)
    assert correct < total and test_acc == f"{100 * correct / total:.2f}", (test.stdout[-500:], test_acc)
