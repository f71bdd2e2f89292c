"""Sweeps and seed repeats through the real entry point (`python -m mnist_lightning sweep|seeds`) on tiny data."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli, start_cli

from mnist_lightning.errors import UserInputError
from mnist_lightning.experiments import load_sweep, seeds_main, summarize

SEED_CONFIG = PROJECT_ROOT / "configs" / "seed.yaml"


def write_sweep(folder: Path, name: str = "tiny", **fields: object) -> Path:
    """A sweep file over the tutorial config: 3 trials, no pruning, a 1 s heartbeat (stale after 3 s)."""
    spec = {
        "configs": [str(SEED_CONFIG)],
        "n_trials": 3,
        "pruner": "none",
        "heartbeat": {"interval": 1, "grace_period": 3},
        "search_space": {
            "model.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
            "model.hidden_sizes": {"type": "categorical", "choices": [[8], [16]]},
        },
    } | fields
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fit_args(data: Path, epochs: int = 2) -> list[str]:
    return ["--data.data_dir", str(data), *TINY_ARGS, "--torch_threads", "1", "--trainer.max_epochs", str(epochs)]


def load(cwd: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{cwd / 'lightning_logs' / 'sweeps' / name / 'study.db'}")


def states(study: optuna.Study) -> Counter:
    return Counter(t.state.name for t in study.trials)


def run_folders(cwd: Path) -> list[str]:
    return sorted(p.name for p in (cwd / "lightning_logs").glob("version_*"))


# ------------------------------------------------------------------------------------------- the sweep file
@pytest.mark.parametrize(("fields", "message"), [
    ({"serach_space": {}}, "unknown field 'serach_space'. Did you mean search_space?"),
    ({"n_trials": "many"}, "n_trials must be a positive whole number"),
    ({"search_space": {"model.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "search_space model.lr"),
    ({"search_space": {"model.lr": {"type": "uniform", "low": 0.1, "high": 1}}}, "needs `type: float|int|categorical`"),
    ({"search_space": {"data.batch_size": {"type": "int", "low": 32, "high": 64, "choices": [1]}}}, "unknown field(s) choices"),
    ({"configs": ["no_such.yaml"]}, "run config no_such.yaml not found"),
    ({"pruner": {"type": "medain"}}, "pruner type must be one of"),
])
def test_sweep_file_mistakes_are_named(tmp_path, fields, message):
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_sweep(write_sweep(tmp_path, **fields))


def test_shipped_sweep_files_load():
    tutorial = load_sweep(PROJECT_ROOT / "configs" / "sweeps" / "tutorial.yaml")
    assert tutorial.configs == [SEED_CONFIG] and set(tutorial.search_space) == {"model.lr", "model.hidden_sizes", "data.batch_size"}
    for name in ("mlp", "mlp_99", "mlp_deskew"):
        sweep = load_sweep(PROJECT_ROOT / "configs" / "sweeps" / f"{name}.yaml")
        assert sweep.configs == [PROJECT_ROOT / "configs" / "mlp_best.yaml"] and sweep.search_space, name


@pytest.mark.slow
def test_unknown_search_space_key_is_refused_before_any_trial(tiny_data, tmp_path):
    space = {"model.hiden_sizes": {"type": "categorical", "choices": [[8]]}}
    result = run_cli("sweep", "--config", str(write_sweep(tmp_path, search_space=space)), *fit_args(tiny_data), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.startswith("error: search_space model.hiden_sizes") and "not accepted" in result.stderr
    assert not (tmp_path / "lightning_logs").exists()  # no run folder, no study


# ------------------------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_sweep_runs_each_trial_as_a_fit_run_and_best_yaml_reproduces_the_best(tiny_data, tmp_path):
    sweep = write_sweep(tmp_path)
    result = run_cli("sweep", "--config", str(sweep), *fit_args(tiny_data), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    study = load(tmp_path)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert sorted(t.user_attrs["run_dir"] for t in study.trials) == [str(tmp_path / f"lightning_logs/version_{i}") for i in range(3)]
    for trial in study.trials:  # an ordinary run each, trained with the trial's own parameters
        run = tmp_path / trial.user_attrs["run_dir"]
        assert (tmp_path / trial.user_attrs["best_checkpoint"]).is_file() and list(run.glob("events.out.tfevents.*"))
        saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["init_args"]
        assert saved["lr"] == trial.params["model.lr"] and str(saved["hidden_sizes"]) == trial.params["model.hidden_sizes"]
    assert len(re.findall(r"^\d+\s+COMPLETE\s", result.stdout, re.M)) == 3

    best = yaml.safe_load((tmp_path / "lightning_logs" / "sweeps" / "tiny" / "best.yaml").read_text())
    assert best["trainer"]["logger"]["init_args"]["version"] is None
    command = re.search(r"Reproduce it with: (.+)", result.stdout).group(1)
    assert shlex.split(command)[1:] == ["-m", "mnist_lightning", "fit", "--config", "lightning_logs/sweeps/tiny/best.yaml"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    refit = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refit.returncode == 0, refit.stderr[-3000:]  # pasted as printed
    assert run_folders(tmp_path)[-1] == "version_3"
    weights = [torch.load(tmp_path / d / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
               for d in (study.best_trial.user_attrs["run_dir"], "lightning_logs/version_3")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])  # the same training, bit for bit

    summary = run_cli("sweep", "--config", str(sweep), "--summary", cwd=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert len(re.findall(r"^\d+\s+COMPLETE\s", summary.stdout, re.M)) == 3 and len(run_folders(tmp_path)) == 4


@pytest.mark.slow
def test_killed_sweep_started_again_finishes_without_counting_a_trial_twice(tiny_data, tmp_path):
    args = ["sweep", "--config", str(write_sweep(tmp_path)), *fit_args(tiny_data, epochs=8)]
    first = start_cli(*args, cwd=tmp_path, log=tmp_path / "first.log")
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
    os.killpg(first.pid, signal.SIGKILL)  # the whole process group, mid-trial
    first.wait()
    finished_before = load(tmp_path).trials[0]

    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    study = load(tmp_path)
    assert states(study) == {"COMPLETE": 3, "FAIL": 1}
    assert study.trials[1].state.name == "FAIL"  # the killed one, failed by its stale heartbeat
    assert study.trials[0].datetime_complete == finished_before.datetime_complete  # kept, not run again
    run_dirs = [t.user_attrs["run_dir"] for t in study.trials]
    assert len(set(run_dirs)) == 4 and len(run_folders(tmp_path)) == 4


@pytest.mark.slow
def test_hopeless_trial_is_stopped_and_recorded_as_pruned(tiny_data, tmp_path):
    # ThresholdPruner(lower=2): no accuracy reaches 2, so the first report prunes, deterministically.
    sweep = write_sweep(tmp_path, n_trials=1, pruner={"type": "threshold", "lower": 2.0})
    result = run_cli("sweep", "--config", str(sweep), *fit_args(tiny_data, epochs=3), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load(tmp_path).trials
    assert trial.state.name == "PRUNED" and list(trial.intermediate_values) == [0]
    last = torch.load(tmp_path / trial.user_attrs["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0  # stopped after the first of 3 epochs
    assert "No trial has completed yet: best.yaml not written." in result.stdout


@pytest.mark.slow
def test_diverged_trial_is_pruned_not_a_sweep_error(tiny_data, tmp_path):
    sweep = write_sweep(tmp_path, n_trials=1, search_space={"model.hidden_sizes": {"type": "categorical", "choices": [[8]]}})
    result = run_cli("sweep", "--config", str(sweep), *fit_args(tiny_data), "--model.lr", "inf", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (trial,) = load(tmp_path).trials
    assert trial.state.name == "PRUNED" and trial.user_attrs["diverged"]


@pytest.mark.slow
def test_two_workers_share_one_study(tiny_data, tmp_path):
    args = ["sweep", "--config", str(write_sweep(tmp_path, n_trials=4)), *fit_args(tiny_data, epochs=4)]
    workers = [start_cli(*args, cwd=tmp_path, log=tmp_path / f"worker{i}.log") for i in range(2)]
    for i, worker in enumerate(workers):
        try:
            assert worker.wait(timeout=180) == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
        finally:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
    study = load(tmp_path)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) == 4  # the study's total, not 4 per worker
    assert all(t.user_attrs.get("surplus") for t in study.trials if t.state.name == "FAIL")
    run_dirs = [t.user_attrs["run_dir"] for t in study.trials if "run_dir" in t.user_attrs]
    assert len(set(run_dirs)) == len(run_dirs) == len(run_folders(tmp_path))  # a folder of its own per trial
    assert len({t.user_attrs["worker"] for t in finished}) == 2  # both did some of the work


# ------------------------------------------------------------------------------------------- seeds
def test_seed_statistics_for_known_values():
    stats = summarize([0.95, 0.96, 0.97])
    assert stats.mean == pytest.approx(0.96) and stats.std == pytest.approx(0.01)  # sample std (n - 1)
    assert (stats.low, stats.high) == (0.95, 0.97)
    assert stats.text(100) == "96.00 ± 1.00  (min 95.00, max 97.00)"
    assert summarize([0.9]).std is None


def test_seeds_refuses_a_repeated_seed():
    with pytest.raises(UserInputError, match="repeats a seed"):
        seeds_main(["--config", str(SEED_CONFIG), "--seeds", "0", "0"])


@pytest.mark.slow
def test_seeds_fits_and_tests_each_seed_and_prints_mean_and_std(tiny_data, tmp_path):
    result = run_cli("seeds", "--config", str(SEED_CONFIG), "--seeds", "0", "1", *fit_args(tiny_data, epochs=1),
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = re.findall(r"^(\d)\s+(\d+\.\d\d)\s+(\d+\.\d\d)\s+[\d.]+\s+(lightning_logs/version_\d)$", result.stdout, re.M)
    assert [r[0] for r in rows] == ["0", "1"] and [r[3] for r in rows] == ["lightning_logs/version_0", "lightning_logs/version_1"]
    for seed, _, test_acc, run in rows:
        assert yaml.safe_load((tmp_path / run / "config.yaml").read_text())["seed_everything"] == int(seed)
        assert 0 < float(test_acc) <= 100
    tests = [float(r[2]) for r in rows]
    expected = summarize([t / 100 for t in tests]).text(100)
    assert re.search(rf"^test acc %\s+{re.escape(expected)}$", result.stdout, re.M)
