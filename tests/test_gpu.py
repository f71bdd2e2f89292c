"""The GPU path: the in-memory dataset on the device, mixed precision, DDP over GPUs.

Tests marked `gpu` need a CUDA GPU and skip, saying so, where torch sees none (as in CI). A person
with a GPU runs them, and a full `fit` + `test` on the real data, with `scripts/check_gpu.sh DATA_DIR`.
Mixed precision is also checked on CPU, where `bf16-mixed` is real autocast (and Lightning turns
`16-mixed`, which has no CPU kernels, into `bf16-mixed` with a warning).

Fits run in this process (`run_cli`; the probe is loaded by class path from this module, which the
tests folder on sys.path makes importable); the 2-GPU DDP launch and the check script are real
processes, the launch on a free port of its own.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import (
    PROJECT_ROOT,
    TINY_ARGS,
    CliResult,
    assert_exact_partition,
    assert_one_run_written,
    image_keys,
    probe_args,
    probe_env,
    read_probes,
    run_cli,
    run_process,
)
from pytorch_lightning.callbacks import Callback
from torch import nn

from mnist_lightning.checkpoints.files import load_checkpoint_file
from mnist_lightning.data.datamodule import MNISTDataModule

GPU_CONFIG = str(PROJECT_ROOT / "configs" / "gpu.yaml")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA GPU: torch.cuda.is_available() is False")


class AutocastProbe(Callback):
    """Test probe: the dtypes the net's first Linear layer computed in during training steps, as JSON.

    Forwards in eval mode (validation, and callbacks that draw figures outside autocast) are left out.
    """

    def __init__(self, out_file: str):
        self.out_file = out_file
        self.dtypes: set[str] = set()
        self._hook: Any = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        first = next(m for m in pl_module.modules() if isinstance(m, nn.Linear))
        self._hook = first.register_forward_hook(self._record)

    def _record(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.dtypes.add(str(output.dtype))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._hook.remove()
        if trainer.is_global_zero:
            Path(self.out_file).write_text(json.dumps(sorted(self.dtypes)))


def fit_with_precision(data_dir: Path, workdir: Path, precision: str, *first: str) -> tuple[CliResult, list[str]]:
    """`fit` in this process with `first` (configs, accelerator) before the precision, which wins."""
    dtypes_file = workdir / "dtypes.json"
    result = run_cli("fit", *first, "--data.data_dir", str(data_dir), *TINY_ARGS, "--torch_threads", "1",
                     "--trainer.max_epochs", "2", "--trainer.precision", precision,
                     "--trainer.callbacks+=test_gpu.AutocastProbe",
                     "--trainer.callbacks.out_file", str(dtypes_file), cwd=workdir)
    assert result.returncode == 0, result.stderr[-5000:]
    return result, json.loads(dtypes_file.read_text())


def free_port() -> int:
    """A port no one listens on now (bound to port 0, then closed): for one DDP launch."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def best_val_acc(run: Path) -> float:
    (best,) = (run / "checkpoints").glob("epoch*-val_acc*.ckpt")
    return float(re.search(r"val_acc([\d.]+)\.ckpt$", best.name).group(1))


def assert_trained_in(workdir: Path, dtypes: list[str], compute_dtype: torch.dtype) -> None:
    assert dtypes == [str(compute_dtype)]  # autocast really ran the layers in half precision
    run = assert_one_run_written(workdir)
    weights = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["state_dict"]
    assert {v.dtype for k, v in weights.items() if k.startswith("net.")} == {torch.float32}  # fp32 master weights
    assert best_val_acc(run) >= 0.8  # and it learned: the fake digits are easy (fp32 reaches ~0.97)


# --------------------------------------------------------------------------------------------- CPU
@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_fit_on_cpu(precision: str, tiny_data: Path, tmp_path: Path) -> None:
    # In this process Lightning's warning reaches Python's warnings machinery (pytest records it), not stderr.
    switched = "AMP with fp16 is not supported on CPU. Using `precision='bf16-mixed'` instead"
    with pytest.warns(UserWarning, match=re.escape(switched)) if precision == "16-mixed" else nullcontext():
        _, dtypes = fit_with_precision(tiny_data, tmp_path, precision, "--trainer.accelerator", "cpu")
    assert_trained_in(tmp_path, dtypes, torch.bfloat16)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the script's answer on a machine without a GPU")
def test_check_gpu_script_fails_clearly_without_a_gpu(tiny_data: Path, tmp_path: Path) -> None:
    # A real process: the subject is the script, its exit code and what it prints.
    result = subprocess.run(["bash", str(PROJECT_ROOT / "scripts" / "check_gpu.sh"), str(tiny_data)], cwd=tmp_path,
                            env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "check_gpu: FAIL: torch sees no CUDA GPU" in result.stdout
    assert list(tmp_path.iterdir()) == [tiny_data]  # wrote nothing beside it


# --------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@requires_cuda
def test_in_memory_dataset_moves_to_the_gpu_once(tiny_data: Path) -> None:
    dm = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100)
    dm.trainer = pl.Trainer(accelerator="gpu", devices=1, logger=False, enable_checkpointing=False)
    dm.setup("fit")
    images = dm.train_set.images
    assert images.is_cuda and dm.train_set.labels.is_cuda and dm.val_set.images.is_cuda
    dm.setup("fit")  # idempotent: nothing is copied again
    assert dm.train_set.images.data_ptr() == images.data_ptr()
    x, y = next(iter(dm.train_dataloader()))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.float32 and x.shape == (64, 1, 28, 28)

    with_workers = MNISTDataModule(data_dir=str(tiny_data), verify=False, val_size=100, num_workers=1)
    with_workers.trainer = dm.trainer
    with_workers.setup("fit")
    assert not with_workers.train_set.images.is_cuda  # worker processes get CPU tensors; Lightning moves batches


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize(("precision", "dtype"), [("16-mixed", torch.float16), ("bf16-mixed", torch.bfloat16)])
def test_fit_on_the_gpu_with_mixed_precision(precision: str, dtype: torch.dtype, tiny_data: Path,
                                             tmp_path: Path) -> None:
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16 support")
    result, dtypes = fit_with_precision(tiny_data, tmp_path, precision, "--config", GPU_CONFIG)
    assert "GPU available: True, used: True" in result.stderr + result.stdout
    assert_trained_in(tmp_path, dtypes, dtype)


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_ddp_on_two_gpus_shards_the_in_memory_data(tiny_data: Path, tmp_path: Path) -> None:
    probes = tmp_path / "probes"
    # A real process (Lightning's launcher starts the command again per GPU), on a port of its own.
    result = run_process("fit", "--config", GPU_CONFIG, "--data.data_dir", str(tiny_data), *TINY_ARGS,
                         "--trainer.max_epochs", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp",
                         *probe_args(probes),
                         cwd=tmp_path, env={**probe_env(), "MASTER_PORT": str(free_port())}, timeout=300)
    assert result.returncode == 0, result.stderr[-5000:]
    keys = image_keys(tiny_data, val_size=100)
    shards = read_probes(probes, "fit", world_size=2)
    assert_exact_partition([p["seen"]["train/0"] for p in shards], keys["train"], "train")
    assert_exact_partition([p["seen"]["val/0"] for p in shards], keys["val"], "val")
    assert_one_run_written(tmp_path)
