"""Speed benchmark: the project's `fit` against plain-PyTorch references, side by side.

    python benchmarks/speed.py --data-dir ../shared/data/mnist [--repeats 3] [--classic]

Runs, alternating and repeated (medians reported), with the tutorial's hyperparameters (784-50-10,
Adam 1e-3, batch 64, 3 epochs, seed 42), each in a fresh process:
  tutorial    the tutorial's plain-PyTorch script (torchvision MNIST + ToTensor + DataLoader), with
              torch's default threads (one per core), as written: the reference of the goals
  tutorial_1t the same with torch threads 1: under load from other processes its time is steadier
              (two threads on a busy 2-core machine can be several times slower), so the
              whole-process ratio against it is shown beside the goal's
  bare        a bare PyTorch loop over in-memory tensors with plain torch.optim.Adam (no Lightning,
              no logging, no validation): the reference of the per-epoch goals
  bare_fused  the same loop with the fused Adam kernel the project's classes use
  default     `python -m mnist_lightning fit` with mnist_lightning/default.yaml (the idiomatic
              MNISTClassifier; validation every epoch, TensorBoard with figures, checkpoints,
              metrics, progress bar), then `test` on its last.ckpt for the test accuracy
  fast        the same with --config configs/fast.yaml (FastMNISTClassifier)
  classic     (--classic only; slow) the default `fit` with --data.pipeline torchvision
  import_floor  `python -c "import pytorch_lightning"`: the part of every whole-process time that no
              project code can remove (torch, Lightning, and the torchmetrics/torchvision they import)
With --gpu (scripts/check_gpu.sh) it runs bare, bare_fused, default and fast on the GPU instead
(configs/gpu.yaml with --trainer.precision 32-true, as the bare loop's fp32), and prints the same
per-epoch table and ratios; the tutorial variants stay CPU references and are left out.
and prints per-epoch time (median of epochs 2..N: epoch 1 includes warm-up; benchmarks/epoch_timer.py
says what a project epoch holds), whole-process time of the 3-epoch run (`fit`; the tutorial's
script also measures its accuracy), peak RSS, val/test accuracy, and the ratios the speed goals are
stated in. Ratios are taken within each repeat (runs next to each other in time) and the median
over repeats is reported, with the range. Times are wall-clock (the goals' measure, and the verdict);
CPU time is shown beside them: on a shared machine it is the steadier estimate of what the wall time
would be on an idle one (for single-threaded runs; the tutorial uses torch's default threads).
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
LABELS = {
    "tutorial": "tutorial script (DataLoader + ToTensor)",
    "tutorial_1t": "the same, torch threads 1",
    "bare": "bare in-memory PyTorch loop, plain Adam",
    "bare_fused": "the same, fused Adam",
    "default": "project `fit`, default config (idiomatic class)",
    "fast": "project `fit`, configs/fast.yaml",
    "classic": "project `fit`, default, --data.pipeline torchvision",
    "import_floor": "`python -c \"import pytorch_lightning\"`",
}
GOALS = {"default_epoch": 1.8, "fast_epoch": 1.25, "process": 0.6, "rss": 1.15}


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, float, str]:
    """Wall time, CPU time and peak RSS in MiB of the child (from wait4), and its stdout; exits on failure."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{BENCH}"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read()[-3000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, out.read()


def torchvision_root(data_dir: Path, workdir: Path) -> Path:
    """torchvision's MNIST reads decompressed files from <root>/MNIST/raw: lay them out once."""
    raw = workdir / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        source = data_dir / f"{name}.gz"
        content = gzip.decompress(source.read_bytes()) if source.exists() else (data_dir / name).read_bytes()
        (raw / name).write_bytes(content)
    return workdir / "tv"


def steady(epoch_times: list[float]) -> float:
    return statistics.median(epoch_times[1:] if len(epoch_times) > 1 else epoch_times)


def run_variant(name: str, cwd: Path, data_dir: Path, tv_root: Path, threads: int, gpu: bool = False) -> dict[str, Any]:
    py = sys.executable
    if name == "import_floor":
        wall, cpu, rss, _ = run_measured([py, "-c", "import pytorch_lightning"], cwd)
        return {"wall": wall, "wall_cpu": cpu, "rss": rss, "epoch": None, "epoch_cpu": None, "val_acc": None,
                "test_acc": None}
    if name in ("tutorial", "tutorial_1t"):
        one = ["--threads", "1"] if name == "tutorial_1t" else []
        tutorial = [py, str(BENCH / "tutorial_reference.py"), "--root", str(tv_root), *one]
        wall, cpu, rss, out = run_measured(tutorial, cwd)
        data = json.loads(out.strip().splitlines()[-1])
        return {"wall": wall, "wall_cpu": cpu, "rss": rss, "epoch": steady(data["epoch_times"]),
                "epoch_cpu": steady(data["epoch_cpu_times"]), "val_acc": None, "test_acc": data["test_acc"]}
    if name in ("bare", "bare_fused"):
        fused = ["--fused"] if name == "bare_fused" else []
        device = ["--device", "cuda"] if gpu else []
        wall, cpu, rss, out = run_measured([py, str(BENCH / "bare_reference.py"), "--data-dir", str(data_dir),
                                            "--threads", str(threads), *fused, *device], cwd)
        data = json.loads(out.strip().splitlines()[-1])
        return {"wall": wall, "wall_cpu": cpu, "rss": rss, "epoch": steady(data["epoch_times"]),
                "epoch_cpu": steady(data["epoch_cpu_times"]), "val_acc": data["val_acc"], "test_acc": data["test_acc"]}
    timing = cwd / "epochs.json"
    extra = {"default": [], "fast": ["--config", str(ROOT / "configs" / "fast.yaml")],
             "classic": ["--data.pipeline", "torchvision"]}[name]
    if gpu:
        extra = ["--config", str(ROOT / "configs" / "gpu.yaml"), *extra, "--trainer.precision", "32-true"]
    wall, cpu, rss, _ = run_measured([py, "-m", "mnist_lightning", "fit", *extra, "--data.data_dir", str(data_dir),
                                      "--torch_threads", str(threads), "--trainer.callbacks+=epoch_timer.EpochTimer",
                                      "--trainer.callbacks.path", str(timing)], cwd)
    data = json.loads(timing.read_text())
    last = cwd / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    test_wall, _, _, out = run_measured([py, "-m", "mnist_lightning", "test", "--ckpt_path", str(last),
                                      "--data.data_dir", str(data_dir), "--trainer.enable_progress_bar", "false",
                                      *(["--trainer.accelerator", "gpu"] if gpu else [])], cwd)
    correct = int(re.search(r"Got (\d+) / 10000", out).group(1))
    return {"wall": wall, "wall_cpu": cpu, "rss": rss, "epoch": steady(data["epoch_times"]),
            "epoch_cpu": steady(data["epoch_cpu_times"]), "val_acc": data["val_acc"],
            "test_acc": correct / 10000, "test_wall": test_wall,
            "figures": data["figures_seconds"] / len(data["epoch_times"]) if data["figures_seconds"] else None,
            "normal_exit": Path(f"{timing}.exit").is_file()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for bare and project (their best here)")
    parser.add_argument("--classic", action="store_true", help="also run the classic torchvision pipeline (slow)")
    parser.add_argument("--gpu", action="store_true", help="bare loops and project on the GPU (scripts/check_gpu.sh)")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    if args.gpu:
        names = ["bare", "bare_fused", "default", "fast"]
    else:
        names = ["tutorial", "tutorial_1t", "bare", "bare_fused", "default", "fast", "import_floor"]
        names += ["classic"] if args.classic else []
    started = datetime.datetime.now().astimezone()

    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tv_root = torchvision_root(data_dir, workdir)
        for repeat in range(args.repeats):
            # Alternate the variants, so drifts in machine load hit all of them, starting one later each repeat.
            order = names[repeat % len(names):] + names[: repeat % len(names)]
            for name in order:
                cwd = workdir / f"{name}{repeat}"
                cwd.mkdir()
                results[name].append(run_variant(name, cwd, data_dir, tv_root, args.threads, args.gpu))
            print(f"repeat {repeat + 1}/{args.repeats}: " + "; ".join(
                f"{name} {results[name][-1]['epoch'] or 0:.3f} s/epoch {results[name][-1]['wall']:.1f} s "
                f"{results[name][-1]['rss']:.0f} MiB" for name in names), file=sys.stderr, flush=True)

    def median(name: str, key: str) -> float | None:
        values = [r[key] for r in results[name] if r.get(key) is not None]
        return statistics.median(values) if values else None

    def ratio(a: str, b: str, key: str) -> tuple[float, float, float]:
        """Median, min and max over repeats of a/b, each repeat's runs taken together."""
        values = [ra[key] / rb[key] for ra, rb in zip(results[a], results[b], strict=True)]
        return statistics.median(values), min(values), max(values)

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    print(f"\n{started:%Y-%m-%d %H:%M %Z}: medians of {args.repeats} alternating runs; 3 epochs, batch 64, Adam 1e-3, "
          f"seed 42; torch threads {args.threads} for bare/project, torch's default for the tutorial.\n")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "?"
    print(f"load average at the end: {load}\n")
    print("| run | s/epoch (CPU s) | whole process s (CPU s) | peak RSS MiB | val acc | test acc |")
    print("|---|---|---|---|---|---|")
    def seconds(name: str, key: str, digits: int = 3) -> str:
        value = median(name, key)
        return "-" if value is None else f"{value:.{digits}f}"

    for name in names:
        print(f"| {name}: {LABELS[name]} | {seconds(name, 'epoch')} ({seconds(name, 'epoch_cpu')}) | "
              f"{median(name, 'wall'):.1f} ({median(name, 'wall_cpu'):.1f}) | {median(name, 'rss'):.0f} | "
              f"{pct(median(name, 'val_acc'))} | {pct(median(name, 'test_acc'))} |")

    print("\n| ratio: median over repeats (range) | wall | CPU | goal (on wall) | |")
    print("|---|---|---|---|---|")

    def span(value: tuple[float, float, float]) -> str:
        return f"{value[0]:.2f} ({value[1]:.2f}-{value[2]:.2f})"

    def row(text: str, a: str, b: str, key: str, cpu_key: str | None, goal: float | None) -> None:
        value = ratio(a, b, key)
        verdict = "" if goal is None else ("met" if value[0] <= goal else "NOT MET")
        goal_text = "-" if goal is None else f"<= {goal}"
        cpu = span(ratio(a, b, cpu_key)) if cpu_key else "-"
        print(f"| {text} | {span(value)} | {cpu} | {goal_text} | {verdict} |")

    row("default s/epoch / bare s/epoch", "default", "bare", "epoch", "epoch_cpu", GOALS["default_epoch"])
    row("fast s/epoch / bare s/epoch", "fast", "bare", "epoch", "epoch_cpu", GOALS["fast_epoch"])
    if args.gpu:  # the rest compares with the tutorial's CPU script
        row("bare+fused s/epoch / bare s/epoch (fused Adam alone)", "bare_fused", "bare", "epoch", "epoch_cpu", None)
        row("default s/epoch / fast s/epoch", "default", "fast", "epoch", "epoch_cpu", None)
        return
    row("default whole process / tutorial whole process", "default", "tutorial", "wall", "wall_cpu", GOALS["process"])
    row("import floor / tutorial whole process (no project code can go below it)", "import_floor", "tutorial", "wall",
        "wall_cpu", None)
    row("fast whole process / tutorial whole process", "fast", "tutorial", "wall", "wall_cpu", GOALS["process"])
    row("default whole process / tutorial_1t whole process", "default", "tutorial_1t", "wall", "wall_cpu", None)
    row("fast whole process / tutorial_1t whole process", "fast", "tutorial_1t", "wall", "wall_cpu", None)
    row("default peak RSS / tutorial peak RSS", "default", "tutorial", "rss", None, GOALS["rss"])
    row("fast peak RSS / tutorial peak RSS", "fast", "tutorial", "rss", None, GOALS["rss"])
    normal = all(r["normal_exit"] for name in ("default", "fast") for r in results[name])
    print(f"| default and fast: normal interpreter exit (atexit ran, exit code 0), every run | "
          f"{'yes' if normal else 'NO'} | - | yes | {'met' if normal else 'NOT MET'} |")
    same = [d["test_acc"] == f["test_acc"] for d, f in zip(results["default"], results["fast"], strict=True)]
    print(f"| test accuracy, idiomatic (default) vs fast class, same seed, every repeat | "
          f"{'identical' if all(same) else 'DIFFERENT'} ({pct(median('default', 'test_acc'))} / "
          f"{pct(median('fast', 'test_acc'))}) | - | identical | {'met' if all(same) else 'NOT MET'} |")
    row("bare+fused s/epoch / bare s/epoch (fused Adam alone)", "bare_fused", "bare", "epoch", "epoch_cpu", None)
    row("default s/epoch / bare+fused s/epoch (same optimizer)", "default", "bare_fused", "epoch", "epoch_cpu", None)
    row("fast s/epoch / bare+fused s/epoch (same optimizer)", "fast", "bare_fused", "epoch", "epoch_cpu", None)
    row("default s/epoch / fast s/epoch", "default", "fast", "epoch", "epoch_cpu", None)
    row("tutorial s/epoch / default s/epoch (times faster)", "tutorial", "default", "epoch", None, None)
    figures = median("default", "figures")
    if figures is not None:
        print(f"| TensorBoard figures, share of a default epoch (included above) | "
              f"{figures / median('default', 'epoch'):.1%} ({figures:.3f} s) | - | - | |")
    test_wall = median("default", "test_wall")
    print(f"| default `test` on last.ckpt, a separate process (not in the whole-process ratio) | {test_wall:.1f} s "
          f"| - | - | |")
    if args.classic:
        row("classic pipeline s/epoch / default s/epoch", "classic", "default", "epoch", "epoch_cpu", None)
        same = all(c["test_acc"] == d["test_acc"] for c, d in zip(results["classic"], results["default"], strict=True))
        print(f"| test accuracy, in-memory vs classic pipeline | {'identical' if same else 'DIFFERENT'} | - | - | |")


if __name__ == "__main__":
    main()
