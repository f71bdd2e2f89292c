"""Shared fixtures: tiny valid IDX datasets written by the tests, the real data folder, a CLI runner."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import traceback
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import forked_cli
import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from filelock import FileLock
from pytorch_lightning.callbacks import Callback

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TESTS_DIR = Path(__file__).resolve().parent
REAL_DATA_DIR = (PROJECT_ROOT / ".." / "shared" / "data" / "mnist").resolve()
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def idx_images_bytes(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    header = (0x803).to_bytes(4, "big") + n.to_bytes(4, "big") + rows.to_bytes(4, "big") + cols.to_bytes(4, "big")
    return header + images.astype(np.uint8).tobytes()


def idx_labels_bytes(labels: np.ndarray) -> bytes:
    return (0x801).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes()


def make_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable fake digits: class k lights a bar at a class-specific place, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        row = 2 + 2 * int(k)
        images[i, row : row + 3, 4:24] = 255
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_idx_dataset(folder: Path, n_train: int = 600, n_test: int = 200, gz: bool = True, layout: str = "flat",
                      raw_folder: str = "MNIST/raw", seed: int = 0) -> Path:
    """Write four small, valid IDX files (not the official ones: load them with verify=False)."""
    target = folder if layout == "flat" else folder / raw_folder
    target.mkdir(parents=True, exist_ok=True)
    train_x, train_y = make_digits(n_train, seed)
    test_x, test_y = make_digits(n_test, seed + 1)
    contents = [
        idx_images_bytes(train_x),
        idx_labels_bytes(train_y),
        idx_images_bytes(test_x),
        idx_labels_bytes(test_y),
    ]
    for name, data in zip(IDX_NAMES, contents, strict=True):
        if gz:
            (target / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (target / name).write_bytes(data)
    return folder


@pytest.fixture
def tiny_data(tmp_path: Path) -> Path:
    """A folder with 600 training and 200 test fake digits, gzipped, flat layout."""
    return write_idx_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """One torch thread per test process: pytest-xdist already runs a process per core, and two threads
    each would fight over the cores (a tiny fit took 6x longer). Runs that set torch_threads set their own."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def every_jsonargparse_deprecation() -> Iterator[None]:
    """jsonargparse warns of each deprecated API once per process: once LightningCLI has called one, the project's
    own call of it would pass unseen. Every call warns, so pyproject's filterwarnings fails the project's calls."""
    previous = os.environ.get("JSONARGPARSE_DEPRECATION_WARNINGS")
    os.environ["JSONARGPARSE_DEPRECATION_WARNINGS"] = "all"
    yield
    if previous is None:
        os.environ.pop("JSONARGPARSE_DEPRECATION_WARNINGS", None)
    else:
        os.environ["JSONARGPARSE_DEPRECATION_WARNINGS"] = previous


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Slow tests first, each group in file order: pytest-xdist's workers then start on the long tests
    and share out the short ones at the end, instead of one worker finishing a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder `build` fills once for the whole test run, shared by every pytest-xdist worker.

    pytest-xdist's documented recipe for session fixtures that must run once: a folder beside the
    workers' own temporary folders, filled under a file lock by the first worker that asks. Tests
    only read it (a test that writes takes a copy).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the workers' base folders are siblings in one folder of this run
    target = root / name
    with FileLock(f"{target}.lock"):
        if not (target / ".built").exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir()
            build(target)
            (target / ".built").touch()
    return target


@pytest.fixture(scope="session")
def shared_tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset, written once for the whole run, for tests that only read it."""
    return built_once(tmp_path_factory, "shared-tiny-data", lambda folder: write_idx_dataset(folder / "tiny")) / "tiny"


@dataclass(frozen=True)
class TrainedRun:
    """A finished `fit` run: its working folder, run folder, checkpoints and what fit printed."""

    workdir: Path
    data_dir: Path
    stdout: str

    @property
    def run_dir(self) -> Path:
        return self.workdir / "lightning_logs" / "version_0"

    @property
    def last(self) -> Path:
        return self.run_dir / "checkpoints" / "last.ckpt"

    @property
    def best(self) -> Path:
        return self.workdir / re.search(r"Best checkpoint \(val/acc [0-9.]+\): (\S+)", self.stdout).group(1)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory, shared_tiny_data: Path) -> TrainedRun:
    """One 2-epoch fit of the default config on the tiny data, trained once per test process and shared
    by the tests that only read a trained run (test, predict, export, load_from_checkpoint). A test that
    writes into the run takes `trained_run_copy` instead."""
    def build(workdir: Path) -> None:
        fit = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--trainer.max_epochs", "2",
                      cwd=workdir)
        assert fit.returncode == 0, fit.stderr
        (workdir / "fit.stdout").write_text(fit.stdout)

    workdir = built_once(tmp_path_factory, "trained-run", build)
    return TrainedRun(workdir, shared_tiny_data, (workdir / "fit.stdout").read_text())


@pytest.fixture
def trained_run_copy(trained_run: TrainedRun, tmp_path: Path) -> TrainedRun:
    """A private copy of `trained_run` (run folder and all), for tests that add to or change the run."""
    shutil.copytree(trained_run.workdir / "lightning_logs", tmp_path / "lightning_logs")
    return TrainedRun(tmp_path, trained_run.data_dir, trained_run.stdout)


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the official MNIST files are not in {REAL_DATA_DIR} (see README, 'Data')")
    return REAL_DATA_DIR


@dataclass(frozen=True)
class TutorialRun:
    """configs/seed.yaml (the tutorial: 3 epochs, Adam 1e-3, batch 64) fitted by one process on the
    official data, and its `test` on the 10,000 test images by one process."""

    workdir: Path
    test_stdout: str

    @property
    def last(self) -> Path:
        return self.workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"

    @property
    def correct(self) -> int:
        """Test images the net gets right: the tutorial's "Got N / 10000" line."""
        return int(re.search(r"Got (\d+) / 10000", self.test_stdout).group(1))


TUTORIAL_ON_CPU = ("--config", str(PROJECT_ROOT / "configs" / "seed.yaml"), "--trainer.accelerator", "cpu",
                   "--trainer.enable_progress_bar", "false", "--torch_threads", "1")


@pytest.fixture(scope="session")
def tutorial_on_real_mnist(tmp_path_factory: pytest.TempPathFactory) -> TutorialRun:
    """The tutorial trained once for the whole run (about 20 s of CPU), for the tests that need a net
    trained on the real digits: its accuracy, the DDP comparison, predictions of saved digits."""
    if not (REAL_DATA_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"the official MNIST files are not in {REAL_DATA_DIR} (see README, 'Data')")

    def build(workdir: Path) -> None:
        data = ("--data.data_dir", str(REAL_DATA_DIR))
        fit = run_cli("fit", *TUTORIAL_ON_CPU, *data, cwd=workdir)
        assert fit.returncode == 0, fit.stderr[-5000:]
        last = workdir / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
        test = run_cli("test", *TUTORIAL_ON_CPU, *data, "--ckpt_path", str(last), "--trainer.logger", "false",
                       cwd=workdir)
        assert test.returncode == 0, test.stderr[-5000:]
        (workdir / "test.stdout").write_text(test.stdout)

    workdir = built_once(tmp_path_factory, "tutorial-on-real-mnist", build)
    return TutorialRun(workdir, (workdir / "test.stdout").read_text())


@dataclass
class CliResult:
    """What a command returned, as `subprocess.CompletedProcess` has it."""

    returncode: int
    stdout: str
    stderr: str
    args: tuple[str, ...] = ()


def run_process(*args: str, cwd: Path, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python -m mnist_lightning ARGS` in a new process in `cwd`: for tests whose subject is the
    process itself (exit codes, signals, console output, DDP launches, printed commands pasted into a shell)."""
    return subprocess.run(
        [sys.executable, "-m", "mnist_lightning", *args],
        cwd=cwd, env=_process_env(env), capture_output=True, text=True, timeout=timeout,
    )


def _process_env(env: dict | None) -> dict[str, str]:
    """This environment with `env` on top, and the project (plus any PYTHONPATH of `env`) importable."""
    extra = dict(env or {})
    paths = [str(PROJECT_ROOT), *(p for p in extra.pop("PYTHONPATH", "").split(os.pathsep) if p)]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}




@contextmanager
def _console_into(out: io.StringIO, err: io.StringIO) -> Iterator[None]:
    """Point stdout/stderr, and the logging handlers that Lightning bound to them at import, into buffers."""
    streams = {id(sys.stdout): out, id(sys.stderr): err, id(sys.__stdout__): out, id(sys.__stderr__): err}
    moved = []
    for logger in [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                          if isinstance(v, logging.Logger))]:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and id(handler.stream) in streams:
                moved.append((handler, handler.setStream(streams[id(handler.stream)])))
    try:
        with redirect_stdout(out), redirect_stderr(err):
            yield
    finally:
        for handler, stream in moved:
            handler.setStream(stream)


def run_cli(*args: str, cwd: Path, env: dict | None = None) -> CliResult:
    """Run `python -m mnist_lightning ARGS` in this process, in `cwd`: `main(ARGS)`, the function the process
    runs, with its exit code, stdout and stderr, and no process start-up (seconds of imports) per call.

    What a run changes process-wide is put back afterwards by pytest's own `MonkeyPatch` (working folder,
    environment, sys.argv, sys.path), plus torch's thread count, the signal handlers, and the user modules it
    imported. `env["PYTHONPATH"]` entries (e.g. a folder with a user's own net) are put on sys.path for the call.
    """
    from mnist_lightning.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    extra_paths = [p for p in (env or {}).get("PYTHONPATH", "").split(os.pathsep) if p]
    # Folders of a test's own modules: not the project (the venv lives inside it) nor the tests folder.
    user_roots = [Path(p).resolve() for p in extra_paths
                  if not PROJECT_ROOT.is_relative_to(Path(p).resolve()) and Path(p).resolve() != TESTS_DIR]
    saved_modules, threads = set(sys.modules), torch.get_num_threads()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in (env or {}).items():
            if name != "PYTHONPATH":
                patch.setenv(name, value)
        for path in reversed(extra_paths):
            patch.syspath_prepend(path)
        patch.setattr(sys, "argv", ["python -m mnist_lightning"])  # the program name of usage lines; ARGS go to main
        patch.chdir(cwd)
        try:
            with _console_into(out, err):
                try:
                    code = main(list(args))
                except BaseException:  # as the interpreter would: the traceback on stderr, exit code 1
                    traceback.print_exc(file=err)
                    code = 1
        finally:
            torch.set_num_threads(threads)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            for name in set(sys.modules) - saved_modules:  # a user's net module from a test's own folder
                module_file = getattr(sys.modules[name], "__file__", None)
                if module_file and any(Path(module_file).resolve().is_relative_to(root) for root in user_roots):
                    del sys.modules[name]
    return CliResult(code, out.getvalue(), err.getvalue(), tuple(args))


# Arguments that make a CLI run on tiny fake data small and quiet.
TINY_ARGS = ("--data.verify", "false", "--data.val_size", "100", "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false")


def start_forked(*args: str, cwd: Path, log: Path, env: dict | None = None) -> forked_cli.ForkedProcess:
    """Start `python -m mnist_lightning ARGS` in `cwd` as a process of its own, forked from one that has imported
    the project already (tests/forked_cli.py), in a process group of its own, stdout and stderr into `log`: for
    tests whose subject is a run's reaction to a signal or a kill, or processes racing each other, not the
    interpreter's start (that is `run_process`)."""
    return forked_cli.start(args, cwd, _process_env(env), log)


# ------------------------------------------------------------------ DDP and GPU probes (tests/test_ddp.py, test_gpu.py)
VAL_SIZE = 101  # odd, so a padding distributed sampler would repeat an image


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


def probe_args(out_dir: Path) -> tuple[str, ...]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return ("--trainer.callbacks+=conftest.RunProbe", "--trainer.callbacks.out_dir", str(out_dir))


def probe_env() -> dict[str, str]:
    """The subprocesses import conftest (for RunProbe) by its module name."""
    return {"PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), str(Path(__file__).resolve().parent)])}


def read_probes(out_dir: Path, stage: str, world_size: int) -> list[dict[str, Any]]:
    files = sorted(out_dir.glob(f"{stage}-rank*.json"))
    assert [f.name for f in files] == [f"{stage}-rank{r}.json" for r in range(world_size)], files
    probes = [json.loads(f.read_text()) for f in files]
    assert all(p["world_size"] == world_size for p in probes)
    return probes


def image_keys(data_dir: Path, val_size: int = VAL_SIZE) -> dict[str, set[str]]:
    """The hash of every image of the train/val/test splits, as the datamodule cuts them."""
    from mnist_lightning.data.datamodule import MNISTDataModule

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


def hparams_row(run_dir: Path) -> dict[str, object]:
    """The hyperparameters of the run's last HPARAMS session, as TensorBoard reads them from the event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    acc.Reload()
    params: dict[str, object] = {}
    for content in acc.PluginTagToContent("hparams").values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for key, value in data.session_start_info.hparams.items():
                params[key] = value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
    return params
