"""DDP on CPU through Lightning: 2 processes (ddp, ddp_spawn) and 2 "nodes" started by torchrun.

Each run is a real `python -m mnist_lightning` on tiny fake data, with a probe callback (`RunProbe`,
loaded by class path) that writes down, per rank, which images each stage saw and the metrics it
ended with. The specs: every rank trains on its own shard of the training images, each epoch;
validation and test see every image exactly once, so the synced accuracy equals a single-process
evaluation of the same checkpoint; one run folder, one config, one set of checkpoints.

DDP launches are real processes (`run_process`, or torchrun started by hand): Lightning's launcher
starts the command again per rank, which an in-process call cannot give it. Each launch gets a free
port of its own (`ddp_env`), so tests in parallel pytest workers never meet on one. Single-process
evaluations and fits run in this process (`run_cli`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import (
    PROJECT_ROOT,
    TINY_ARGS,
    TUTORIAL_ON_CPU,
    VAL_SIZE,
    TutorialRun,
    assert_exact_partition,
    assert_one_run_written,
    image_keys,
    probe_args,
    probe_env,
    read_probes,
    run_cli,
    run_process,
    write_idx_dataset,
)

from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.models.classifier import MNISTClassifier

TIMEOUT_S = 180
# 601 training images - 101 for validation = 500 to train on (250 per rank, 4 batches of 64);
# 101 validation and 201 test images (VAL_SIZE, in conftest): odd, so a padding sampler would repeat one image.
N_TRAIN, N_TEST = 601, 201
SMALL = (*TINY_ARGS, "--data.val_size", str(VAL_SIZE), "--torch_threads", "1", "--trainer.accelerator", "cpu")
# Dropout (random draws per step) and a per-step schedule: what makes the fast class's bit-for-bit match
# with the idiomatic one non-trivial. The sharding runs train with them too, so one run serves both tests.
MODEL_UNDER_TEST = ("--model.net.init_args.dropout", "0.2", "--model.lr_scheduler", "mnist_lightning.models.OneCycle")


def assert_checkpoint_loads(path: Path, epoch: int, global_step: int) -> None:
    checkpoint = load_checkpoint_file(path)
    assert (checkpoint["epoch"], checkpoint["global_step"]) == (epoch, global_step)
    model = MNISTClassifier.load_from_checkpoint(path, map_location="cpu")
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def free_port() -> int:
    """A port no one listens on now (bound to port 0, then closed): for one DDP launch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_env() -> dict[str, str]:
    """The probe's import path and a free MASTER_PORT of this launch's own (Lightning reads it on every rank)."""
    return {**probe_env(), "MASTER_PORT": str(free_port())}


def got_line(output: str) -> str:
    """The tutorial's closing line, e.g. 'Got 190 / 201 with accuracy 94.53'."""
    lines = re.findall(r"Got \d+ / \d+ with accuracy [\d.]+", output)
    assert len(lines) == 1, output[-3000:]  # printed once, by rank 0
    return lines[0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_idx_dataset(tmp_path_factory.mktemp("ddp") / "data", n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def keys(data_dir: Path) -> dict[str, set[str]]:
    return image_keys(data_dir)


@pytest.fixture(scope="module")
def half_trained(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after two training steps: accuracy strictly between 0 and 1, which one repeated
    evaluation image would change."""
    workdir = tmp_path_factory.mktemp("half_trained")
    fit = run_cli("fit", "--data.data_dir", str(data_dir), *SMALL, "--trainer.max_epochs", "1",
                  "--trainer.limit_train_batches", "2", cwd=workdir)
    assert fit.returncode == 0, fit.stderr[-5000:]
    return workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"


@dataclass(frozen=True)
class DdpFit:
    """A finished 2-process, 2-epoch `fit` (MODEL_UNDER_TEST, probe on): its folder, probes and output."""

    workdir: Path
    probes_dir: Path
    result: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def ddp_fit(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], DdpFit]:
    """`ddp_fit(strategy, pipeline)`: that DDP fit, run once per module and shared by the tests that read
    different aspects of it (sharding and the one run folder; the fast class's weights under DDP)."""
    fits: dict[tuple[str, str], DdpFit] = {}

    def fit(strategy: str, pipeline: str) -> DdpFit:
        if (strategy, pipeline) not in fits:
            workdir = tmp_path_factory.mktemp(f"{strategy}-{pipeline}")
            probes_dir = workdir / "probes"
            result = run_process("fit", "--data.data_dir", str(data_dir), *SMALL, *MODEL_UNDER_TEST,
                                 "--data.pipeline", pipeline, "--trainer.devices", "2", "--trainer.strategy", strategy,
                                 "--trainer.max_epochs", "2", *probe_args(probes_dir), cwd=workdir, env=ddp_env(),
                                 timeout=TIMEOUT_S)
            assert result.returncode == 0, result.stderr[-5000:]
            fits[strategy, pipeline] = DdpFit(workdir, probes_dir, result)
        return fits[strategy, pipeline]

    return fit


# -------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "pipeline"), [("ddp", "memory"), ("ddp_spawn", "memory"), ("ddp", "torchvision")])
def test_two_processes_shard_training_data_and_write_one_run(strategy: str, pipeline: str,
                                                             ddp_fit: Callable[[str, str], DdpFit],
                                                             keys: dict[str, set[str]]) -> None:
    fit = ddp_fit(strategy, pipeline)
    assert "Training batch: 64 per process x 2 processes = global batch 128." in fit.result.stdout + fit.result.stderr

    probes = read_probes(fit.probes_dir, "fit", world_size=2)
    for epoch in (0, 1):
        assert_exact_partition([p["seen"][f"train/{epoch}"] for p in probes], keys["train"], f"train epoch {epoch}")
        assert_exact_partition([p["seen"][f"val/{epoch}"] for p in probes], keys["val"], f"val epoch {epoch}")
    # Reshuffled (seeded) every epoch: rank 0 does not get the same shard twice.
    assert set(probes[0]["seen"]["train/0"]) != set(probes[0]["seen"]["train/1"])
    # The ranks log the same synced epoch metrics (metric objects sync themselves). The per-step
    # `train/loss_step` is each rank's own batch loss: only rank 0's reaches the logger, unsynced
    # on purpose (an all-reduce every step would cost more than this net's step).
    def synced(probe: dict) -> dict:
        return {stage: {k: v for k, v in m.items() if k != "train/loss_step"} for stage, m in probe["metrics"].items()}

    assert synced(probes[0]) == synced(probes[1])

    run = assert_one_run_written(fit.workdir)
    # 250 images per rank = 4 steps per epoch (not the 8 of one process seeing all 500).
    assert_checkpoint_loads(run / "checkpoints" / "last.ckpt", epoch=1, global_step=8)


@pytest.mark.slow
def test_under_ddp_the_fast_class_ends_with_the_idiomatic_class_weights(data_dir: Path,
                                                                         ddp_fit: Callable[[str, str], DdpFit],
                                                                         tmp_path: Path) -> None:
    """Several manual backward passes per DDP forward (FastMNISTClassifier): gradients are still
    averaged at every step, so the weights equal MNISTClassifier's, bit for bit. The idiomatic run is
    the sharding test's ddp/memory fit (same options; its probe callback only reads batches)."""
    fast = run_process("fit", "--data.data_dir", str(data_dir), *SMALL, *MODEL_UNDER_TEST, "--trainer.devices", "2",
                       "--trainer.strategy", "ddp", "--trainer.max_epochs", "2",
                       "--config", str(PROJECT_ROOT / "configs" / "fast.yaml"), "--model.steps_per_call", "3",
                       cwd=tmp_path, env=ddp_env(), timeout=TIMEOUT_S)
    assert fast.returncode == 0, fast.stderr[-5000:]
    weights = {}
    for name, workdir in (("idiomatic", ddp_fit("ddp", "memory").workdir), ("fast", tmp_path)):
        checkpoint = torch.load(workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt",
                                weights_only=True)
        assert checkpoint["global_step"] == 8  # 4 steps per epoch per process
        assert checkpoint["hyper_parameters"]["net"]["init_args"]["dropout"] == 0.2
        weights[name] = checkpoint["state_dict"]
    assert weights["idiomatic"].keys() == weights["fast"].keys()
    for name, value in weights["idiomatic"].items():
        assert torch.equal(value, weights["fast"][name]), name


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_two_process_evaluation_equals_single_process(subcommand: str, data_dir: Path, keys: dict[str, set[str]],
                                                       half_trained: Path, tmp_path: Path) -> None:
    """Same checkpoint, odd-sized split (101 val, 201 test): identical accuracy, every image once."""
    ckpt = half_trained
    stage, split = ("test", "test") if subcommand == "test" else ("validate", "val")
    logged = subcommand  # `validate` logs validate/acc (the fit's val/acc is the fit's own curve)
    runs = {}
    for devices in (1, 2):
        out = tmp_path / f"probes-{devices}"
        args = (subcommand, "--data.data_dir", str(data_dir), *SMALL, "--ckpt_path", str(ckpt),
                "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices == 2 else "auto",
                "--trainer.logger", "false", *probe_args(out))
        if devices == 1:  # in this process (conftest.RunProbe is importable here)
            result = run_cli(*args, cwd=tmp_path)
        else:
            result = run_process(*args, cwd=tmp_path, env=ddp_env(), timeout=TIMEOUT_S)
        assert result.returncode == 0, result.stderr[-5000:]
        runs[devices] = (result, read_probes(out, stage, world_size=devices))

    (single, (one,)), (ddp, two) = runs[1], runs[2]
    assert_exact_partition([p["seen"][split] for p in two], keys[split], split)
    assert_exact_partition([one["seen"][split]], keys[split], f"{split}, one process")
    metrics_one = one["metrics"][split]
    assert 0 < metrics_one[f"{logged}/acc"] < 1
    for rank in two:
        metrics_two = rank["metrics"][split]
        assert metrics_two[f"{logged}/acc"] == metrics_one[f"{logged}/acc"]  # exactly: synced counts
        assert metrics_two[f"{logged}/loss"] == pytest.approx(metrics_one[f"{logged}/loss"], rel=1e-5)
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
def test_two_nodes_with_torchrun(data_dir: Path, keys: dict[str, set[str]], tmp_path: Path) -> None:
    """Two one-process "nodes" on this machine, as on a cluster: torchrun --nnodes 2 --node_rank 0|1."""
    port, probes_dir = free_port(), tmp_path / "probes"
    args = ("-m", "mnist_lightning", "fit", "--data.data_dir", str(data_dir), *SMALL, "--trainer.max_epochs", "2",
            "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.strategy", "ddp", *probe_args(probes_dir))
    env = {**os.environ, **probe_env()}  # torchrun hands its --master_port to the workers
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
def test_ddp_reaches_the_accuracy_of_one_process_on_real_mnist(real_data: Path, tutorial_on_real_mnist: TutorialRun,
                                                               tmp_path: Path) -> None:
    """The tutorial (configs/seed.yaml: 3 epochs, Adam 1e-3, global batch 64) on the official data:
    2 DDP processes x 32 (configs/ddp.yaml) end within 0.5 points of test accuracy of 1 process x 64
    (conftest's `tutorial_on_real_mnist`, fitted and tested with the same flags, shared with test_cli)."""
    accuracy = {}
    assert_checkpoint_loads(tutorial_on_real_mnist.last, epoch=2, global_step=3 * 860)  # 55,000 images / 64 a step
    accuracy["1 process x 64"] = float(got_line(tutorial_on_real_mnist.test_stdout).split()[-1])
    data = ("--data.data_dir", str(real_data))
    # The DDP launch: a real process.
    fit = run_process("fit", *TUTORIAL_ON_CPU, "--config", str(PROJECT_ROOT / "configs" / "ddp.yaml"), *data,
                      cwd=tmp_path, env=ddp_env(), timeout=1800)
    assert fit.returncode == 0, fit.stderr[-5000:]
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    assert_checkpoint_loads(last, epoch=2, global_step=3 * 860)  # the same steps with 2 x 32
    # Evaluated as the one-process run was: by one process, on the 10,000 test images.
    test = run_cli("test", *TUTORIAL_ON_CPU, *data, "--ckpt_path", str(last), "--trainer.logger", "false", cwd=tmp_path)
    assert test.returncode == 0, test.stderr[-5000:]
    line = got_line(test.stdout)
    assert " / 10000 with" in line and " / 10000 with" in got_line(tutorial_on_real_mnist.test_stdout)
    accuracy["2 processes x 32"] = float(line.split()[-1])
    print(f"test accuracy (%): {accuracy}")
    one, two = accuracy.values()
    assert abs(one - two) <= 0.5, accuracy


@pytest.mark.slow
def test_slurm_script_requeues_and_resumes_into_the_same_run(data_dir: Path, tmp_path: Path) -> None:
    """scripts/slurm_fit.sbatch under a stand-in SLURM (one task; `srun` runs the command, `scontrol`
    records its arguments): SIGUSR1 makes Lightning save hpc_ckpt_1.ckpt and requeue the job, the
    following SIGTERM makes the project save last.ckpt; the requeued job resumes the same run."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (stubs / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    # A free MASTER_PORT: without it Lightning's SLURMEnvironment takes 15000 + the job id's last digits, a fixed port.
    env = {**os.environ, **ddp_env(), "PATH": f"{stubs}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
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

    # Real processes: the subject is the batch script, its signals and its exit code.
    first = subprocess.run(args, cwd=tmp_path, env={**env, "FAULT_INJECTION": "1"},
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-5000:]
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    run = tmp_path / "lightning_logs" / "slurm-4242"
    assert (run / "hpc_ckpt_1.ckpt").is_file() and (run / "checkpoints" / "last.ckpt").is_file()

    requeued = subprocess.run(args, cwd=tmp_path, env={**env, "FAULT_INJECTION": "0", "MASTER_PORT": str(free_port())},
                              capture_output=True, text=True, timeout=TIMEOUT_S)
    assert requeued.returncode == 0, requeued.stderr[-5000:]
    newer = Path("lightning_logs/slurm-4242/checkpoints/last.ckpt")
    assert f"resuming from {newer}" in requeued.stdout  # the newer one
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["slurm-4242"]
    assert_checkpoint_loads(run / "checkpoints" / "last.ckpt", epoch=2, global_step=3 * 8)  # 500 images / 64
