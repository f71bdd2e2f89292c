"""DDP on CPU through Lightning: 2 processes (ddp, ddp_spawn) and 2 "nodes" started by torchrun.

Each run is a real `python -m mnist_lightning` on tiny fake data, with a probe callback (`RunProbe`,
loaded by class path) that writes down, per rank, which images each stage saw and the metrics it
ended with. The specs: every rank trains on its own shard of the training images, each epoch;
validation and test see every image exactly once, so the synced accuracy equals a single-process
evaluation of the same checkpoint; one run folder, one config, one set of checkpoints.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import PROJECT_ROOT, TINY_ARGS, run_cli, write_idx_dataset
from pytorch_lightning.callbacks import Callback

from mnist_lightning.data import MNISTDataModule
from mnist_lightning.model import MNISTClassifier
from mnist_lightning.resume import load_checkpoint_file

TESTS_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 180
# 601 training images - 101 for validation = 500 to train on (250 per rank, 4 batches of 64);
# 101 validation and 201 test images: odd, so a padding sampler would repeat one image.
N_TRAIN, VAL_SIZE, N_TEST = 601, 101, 201
SMALL = (*TINY_ARGS, "--data.val_size", str(VAL_SIZE), "--torch_threads", "1", "--trainer.accelerator", "cpu")


class RunProbe(Callback):
    """Test probe: per rank, the images each stage saw and the metrics it ended with, as JSON.

    An image is named by a hash of its pixels, so shards can be compared across processes whatever
    the pipeline (in-memory or torchvision) and sampler. Written at teardown to
    `<out_dir>/<stage>-rank<R>.json`.
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.metrics: dict[str, dict[str, float]] = {}

    @staticmethod
    def _keys(batch: Any) -> list[str]:
        pixels = (batch[0].detach().float().cpu().flatten(1) * 255).round().to(torch.uint8).numpy()
        return [hashlib.sha1(row.tobytes()).hexdigest() for row in pixels]

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # The hook sees the last batch of each training_step call: probe_args sets one batch per call.
        self.seen[f"train/{trainer.current_epoch}"] += self._keys(batch)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self.seen[self._val_key(trainer)] += self._keys(batch)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.metrics[self._val_key(trainer)] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    @staticmethod
    def _val_key(trainer: pl.Trainer) -> str:
        return f"val/{trainer.current_epoch}" if trainer.state.fn == "fit" else "val"

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self.seen["test"] += self._keys(batch)

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.metrics["test"] = {k: float(v) for k, v in trainer.callback_metrics.items()}

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        out = Path(self.out_dir) / f"{getattr(stage, 'value', stage)}-rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "seen": self.seen, "metrics": self.metrics}))


# ------------------------------------------------------------------------------------------ helpers
def probe_args(out_dir: Path) -> tuple[str, ...]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return ("--trainer.callbacks+=test_ddp.RunProbe", "--trainer.callbacks.out_dir", str(out_dir))


def probe_env() -> dict[str, str]:
    """The subprocesses import this file (for RunProbe) by its module name."""
    return {"PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(TESTS_DIR)])}


def read_probes(out_dir: Path, stage: str, world_size: int) -> list[dict[str, Any]]:
    files = sorted(out_dir.glob(f"{stage}-rank*.json"))
    assert [f.name for f in files] == [f"{stage}-rank{r}.json" for r in range(world_size)], files
    probes = [json.loads(f.read_text()) for f in files]
    assert all(p["world_size"] == world_size for p in probes)
    return probes


def image_keys(data_dir: Path, val_size: int = VAL_SIZE) -> dict[str, set[str]]:
    """The hash of every image of the train/val/test splits, as the datamodule cuts them."""
    dm = MNISTDataModule(data_dir=str(data_dir), verify=False, val_size=val_size)
    dm.setup(None)
    keys = {}
    for name, dataset in (("train", dm.train_set), ("val", dm.val_set), ("test", dm.test_set)):
        keys[name] = set(RunProbe._keys((dataset.images.unsqueeze(1).float() / 255,)))
        assert len(keys[name]) == len(dataset)  # the fake images are all distinct
    return keys


def assert_exact_partition(shards: list[list[str]], expected: set[str], what: str) -> None:
    """Every image of `expected` seen by exactly one rank, once."""
    all_seen = [key for shard in shards for key in shard]
    assert len(all_seen) == len(expected), f"{what}: {len(all_seen)} images seen for {len(expected)} (repeats?)"
    assert set(all_seen) == expected, f"{what}: the ranks' shards do not cover the split exactly"
    assert all(len(shard) > 0 for shard in shards), f"{what}: a rank saw nothing"


def assert_one_run_written(workdir: Path) -> Path:
    """One run folder, one saved config, one TensorBoard event file, one set of checkpoints."""
    logs = workdir / "lightning_logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0"]
    run = logs / "version_0"
    assert sorted(p.name for p in run.glob("config*.yaml")) == ["config.yaml"]
    assert len(list(run.glob("events.out.tfevents.*"))) == 1
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names, names
    assert len([n for n in names if n.startswith("epoch")]) == 1, names  # save_top_k 1
    assert not [n for n in names if n.endswith(".tmp") or re.search(r"-v\d+\.ckpt$", n)], names
    return run


def assert_checkpoint_loads(path: Path, epoch: int, global_step: int) -> None:
    checkpoint = load_checkpoint_file(path)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (epoch, global_step)
    model = MNISTClassifier.load_from_checkpoint(path, map_location="cpu")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def got_line(output: str) -> str:
    """The tutorial's closing line, e.g. 'Got 190 / 201 with accuracy 94.53'."""
    lines = re.findall(r"Got \d+ / \d+ with accuracy [\d.]+", output)
    assert len(lines) == 1, output[-3000:]  # printed once, by rank 0
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("ddp") / "data", n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def keys(data_dir: Path) -> dict[str, set[str]]:
    return image_keys(data_dir)


@pytest.fixture(scope="module")
def half_trained(data_dir: Path, tmp_path_factory) -> Path:
    """A checkpoint after two training steps: accuracy strictly between 0 and 1, which one repeated
    evaluation image would change."""
    workdir = tmp_path_factory.mktemp("half_trained")
    fit = run_cli("fit", "--data.data_dir", str(data_dir), *SMALL, "--trainer.max_epochs", "1",
                  "--trainer.limit_train_batches", "2", cwd=workdir, timeout=TIMEOUT_S)
    assert fit.returncode == 0, fit.stderr[-5000:]
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "pipeline"), [("ddp", "memory"), ("ddp_spawn", "memory"), ("ddp", "torchvision")])
def test_two_processes_shard_training_data_and_write_one_run(strategy, pipeline, data_dir, keys, tmp_path):
    probes_dir = tmp_path / "probes"
    result = run_cli("fit", "--data.data_dir", str(data_dir), *SMALL, "--data.pipeline", pipeline,
                     "--trainer.devices", "2", "--trainer.strategy", strategy, "--trainer.max_epochs", "2",
                     *probe_args(probes_dir), cwd=tmp_path, env=probe_env(), timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Training batch: 64 per process x 2 processes = global batch 128." in result.stdout + result.stderr

    probes = read_probes(probes_dir, "fit", world_size=2)
    for epoch in (0, 1):
        assert_exact_partition([p["seen"][f"train/{epoch}"] for p in probes], keys["train"], f"train epoch {epoch}")
        assert_exact_partition([p["seen"][f"val/{epoch}"] for p in probes], keys["val"], f"val epoch {epoch}")
    # Reshuffled (seeded) every epoch: rank 0 does not get the same shard twice.
    assert set(probes[0]["seen"]["train/0"]) != set(probes[0]["seen"]["train/1"])
    # The ranks log the same synced validation metrics.
    assert probes[0]["metrics"] == probes[1]["metrics"]

    run = assert_one_run_written(tmp_path)
    # 250 images per rank = 4 steps per epoch (not the 8 of one process seeing all 500).
    assert_checkpoint_loads(run / "checkpoints" / "last.ckpt", epoch=1, global_step=8)


@pytest.mark.slow
def test_under_ddp_the_fast_class_ends_with_the_idiomatic_class_weights(data_dir, tmp_path):
    """Several manual backward passes per DDP forward (FastMNISTClassifier): gradients are still
    averaged at every step, so the weights equal MNISTClassifier's, bit for bit."""
    weights = {}
    variants = {"idiomatic": (), "fast": ("--config", str(PROJECT_ROOT / "configs" / "fast.yaml"),
                                          "--model.steps_per_call", "3")}
    for name, extra in variants.items():
        workdir = tmp_path / name
        workdir.mkdir()
        result = run_cli("fit", "--data.data_dir", str(data_dir), *SMALL, "--trainer.devices", "2",
                         "--trainer.strategy", "ddp", "--trainer.max_epochs", "2", "--model.dropout", "0.2",
                         "--model.lr_schedule", "onecycle", *extra, cwd=workdir, timeout=TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-5000:]
        checkpoint = torch.load(workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["global_step"] == 8  # 4 steps per epoch per process
        weights[name] = checkpoint["state_dict"]
    assert weights["idiomatic"].keys() == weights["fast"].keys()
    for name, value in weights["idiomatic"].items():
        assert torch.equal(value, weights["fast"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_two_process_evaluation_equals_single_process(subcommand, data_dir, keys, half_trained, tmp_path):
    """Same checkpoint, odd-sized split (101 val, 201 test): identical accuracy, every image once."""
    ckpt = half_trained
    stage, split = ("test", "test") if subcommand == "test" else ("validate", "val")
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"probes-{devices}"
        result = run_cli(subcommand, "--data.data_dir", str(data_dir), *SMALL, "--ckpt_path", str(ckpt),
                         "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices == 2 else "auto",
                         "--trainer.logger", "false", *probe_args(out), cwd=tmp_path, env=probe_env(), timeout=TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-5000:]
        runs[devices] = (result, read_probes(out, stage, world_size=devices))

    (single, (one,)), (ddp, two) = runs[1], runs[2]
    assert_exact_partition([p["seen"][split] for p in two], keys[split], split)
    assert_exact_partition([one["seen"][split]], keys[split], f"{split}, one process")
    metrics_one = one["metrics"][split]
    assert 0 < metrics_one[f"{split}/acc"] < 1
    for rank in two:
        metrics_two = rank["metrics"][split]
        assert metrics_two[f"{split}/acc"] == metrics_one[f"{split}/acc"]  # exactly: synced counts
        assert metrics_two[f"{split}/loss"] == pytest.approx(metrics_one[f"{split}/loss"], rel=1e-5)
    if subcommand == "test":
        assert got_line(ddp.stdout) == got_line(single.stdout)
        assert f" / {N_TEST} with" in got_line(ddp.stdout)


def _stop(procs: list[subprocess.Popen]) -> None:
    """End the torchrun processes this test started: SIGTERM first (torchrun then ends its workers,
    which run in sessions of their own), SIGKILL to each one's process group if that does not do."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
def test_two_nodes_with_torchrun(data_dir, keys, tmp_path):
    """Two one-process "nodes" on this machine, as on a cluster: torchrun --nnodes 2 --node_rank 0|1."""
    port, probes_dir = free_port(), tmp_path / "probes"
    args = ("-m", "mnist_lightning", "fit", "--data.data_dir", str(data_dir), *SMALL, "--trainer.max_epochs", "2",
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp", *probe_args(probes_dir))
    env = {**os.environ, **probe_env()}
    procs, outputs = [], []
    try:
        for node_rank in (0, 1):
            log = open(tmp_path / f"node{node_rank}.log", "w+")  # closed in `finally`
            outputs.append(log)
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                 "--node_rank", str(node_rank), "--master_addr", "127.0.0.1", "--master_port", str(port), *args],
                cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            ))
        codes = [proc.wait(timeout=TIMEOUT_S) for proc in procs]
    except subprocess.TimeoutExpired:
        codes = None
    finally:
        _stop(procs)
        logs = []
        for log in outputs:
            log.seek(0)
            logs.append(log.read())
            log.close()
    assert codes is not None, f"torchrun did not finish in {TIMEOUT_S} s:\n" + "\n====\n".join(x[-3000:] for x in logs)
    assert codes == [0, 0], "\n====\n".join(x[-3000:] for x in logs)

    probes = read_probes(probes_dir, "fit", world_size=2)
    for epoch in (0, 1):
        assert_exact_partition([p["seen"][f"train/{epoch}"] for p in probes], keys["train"], f"train epoch {epoch}")
    run = assert_one_run_written(tmp_path)
    assert_checkpoint_loads(run / "checkpoints" / "last.ckpt", epoch=1, global_step=8)
    assert "Best checkpoint" in logs[0] and "Best checkpoint" not in logs[1]  # the summary comes from rank 0 only


@pytest.mark.slow
@pytest.mark.real_data
def test_ddp_reaches_the_accuracy_of_one_process_on_real_mnist(real_data, tmp_path):
    """The tutorial (configs/seed.yaml: 3 epochs, Adam 1e-3, global batch 64) on the official data:
    2 DDP processes x 32 (configs/ddp.yaml) end within 0.5 points of test accuracy of 1 process x 64."""
    configs = PROJECT_ROOT / "configs"
    accuracy = {}
    for name, preset in (("1 process x 64", ()), ("2 processes x 32", ("--config", str(configs / "ddp.yaml")))):
        workdir = tmp_path / name.replace(" ", "_")
        workdir.mkdir()
        common = ("--config", str(configs / "seed.yaml"), *preset, "--data.data_dir", str(real_data),
                  "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", "--torch_threads", "1")
        fit = run_cli("fit", *common, cwd=workdir, timeout=1800)
        assert fit.returncode == 0, fit.stderr[-5000:]
        last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        assert_checkpoint_loads(last, epoch=2, global_step=3 * 860)  # 55,000 images / 64 a step, either way
        # Both checkpoints evaluated the same way, by one process, on the 10,000 test images.
        test = run_cli("test", "--config", str(configs / "seed.yaml"), "--data.data_dir", str(real_data), "--ckpt_path",
                       str(last), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                       "--trainer.logger", "false", "--torch_threads", "1", cwd=workdir, timeout=600)
        assert test.returncode == 0, test.stderr[-5000:]
        line = got_line(test.stdout)
        assert " / 10000 with" in line
        accuracy[name] = float(line.split()[-1])
    print(f"test accuracy (%): {accuracy}")
    one, two = accuracy.values()
    assert abs(one - two) <= 0.5, accuracy


@pytest.mark.slow
def test_slurm_script_requeues_and_resumes_into_the_same_run(data_dir, tmp_path):
    """scripts/slurm_fit.sbatch under a stand-in SLURM (one task; `srun` runs the command, `scontrol`
    records its arguments): SIGUSR1 makes Lightning save hpc_ckpt_1.ckpt and requeue the job, the
    following SIGTERM makes the project save last.ckpt; the requeued job resumes the same run."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (stubs / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {**os.environ, **probe_env(), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
           "PROJECT_DIR": str(PROJECT_ROOT), "DATA_DIR": str(data_dir), "SLURM_SUBMIT_DIR": str(tmp_path),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "mnist-ddp", "SLURM_NNODES": "1", "SLURM_JOB_NUM_NODES": "1",
           "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
           "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    args = ("bash", str(PROJECT_ROOT / "scripts" / "slurm_fit.sbatch"), *SMALL, "--trainer.precision", "32-true",
            "--trainer.max_epochs", "3",
            "--trainer.callbacks+=fault_injection.SignalAt", "--trainer.callbacks.epoch", "1",
            "--trainer.callbacks.batch", "1", "--trainer.callbacks.signal_name", "SIGUSR1",
            "--trainer.callbacks+=fault_injection.SignalAt", "--trainer.callbacks.epoch", "1",
            "--trainer.callbacks.batch", "2", "--trainer.callbacks.signal_name", "SIGTERM")

    first = subprocess.run(args, cwd=tmp_path, env={**env, "FAULT_INJECTION": "1"}, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-5000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    run = tmp_path / "lightning_logs" / "slurm-4242"
    assert (run / "hpc_ckpt_1.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    requeued = subprocess.run(args, cwd=tmp_path, env={**env, "FAULT_INJECTION": "0"}, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert requeued.returncode == 0, requeued.stderr[-5000:]
    assert f"resuming from {Path('lightning_logs/slurm-4242/checkpoints/last.ckpt')}" in requeued.stdout  # the newer one
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["slurm-4242"]
    assert_checkpoint_loads(run / "checkpoints" / "last.ckpt", epoch=2, global_step=3 * 8)  # 500 images / 64
