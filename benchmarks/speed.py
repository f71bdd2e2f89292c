"""Speed benchmark: the project's `fit` against plain-PyTorch references, side by side.

    python benchmarks/speed.py --data-dir ../shared/data/mnist [--repeats 3]

Runs, alternating and repeated (medians reported), with the tutorial's hyperparameters (784-50-10,
Adam 1e-3, batch 64, 3 epochs, seed 42):
  tutorial  the tutorial's plain-PyTorch script (torchvision MNIST + ToTensor + DataLoader)
  bare      a bare PyTorch loop over in-memory tensors (no Lightning, no logging, no validation)
  bare+fused  the same loop with the fused Adam kernel the project uses: the pure framework cost
  project   `python -m mnist_lightning fit` with configs/default.yaml (validation every epoch,
            TensorBoard, checkpoints, metrics, progress bar), then `test` for the test accuracy
  classic   the same `fit` with --data.pipeline torchvision (per-sample PIL + ToTensor)
and prints per-epoch time (median of epochs 2..N: epoch 1 includes warm-up), whole-process time,
peak RSS, final val/test accuracy, and the ratios the speed goals are stated in.
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
IDX = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def run_measured(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Like run(), with the child's own peak RSS from wait4 (communicate() would reap it first)."""
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
        return wall, usage.ru_maxrss / 1024, out.read()


def torchvision_root(data_dir: Path, workdir: Path) -> Path:
    """torchvision's MNIST reads decompressed files from <root>/MNIST/raw: lay them out once."""
    raw = workdir / "tv" / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in IDX:
        source = data_dir / f"{name}.gz"
        (raw / name).write_bytes(gzip.decompress(source.read_bytes()) if source.exists() else (data_dir / name).read_bytes())
    return workdir / "tv"


def steady(epoch_times: list[float]) -> float:
    return statistics.median(epoch_times[1:] if len(epoch_times) > 1 else epoch_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for bare and project (their best here)")
    args = parser.parse_args()
    data_dir = args.data_dir.resolve()
    py = sys.executable

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        tv_root = torchvision_root(data_dir, workdir)
        results: dict[str, list[dict]] = {"tutorial": [], "bare": [], "bare_fused": [], "project": [], "classic": []}
        for repeat in range(args.repeats):
            for name in results:  # alternate the variants, so drifts in machine load hit all of them
                cwd = workdir / f"{name}{repeat}"
                cwd.mkdir()
                if name == "tutorial":
                    wall, rss, out = run_measured([py, str(BENCH / "tutorial_reference.py"), "--root", str(tv_root)], cwd)
                    data = json.loads(out.strip().splitlines()[-1])
                    results[name].append({"wall": wall, "rss": rss, "epoch": steady(data["epoch_times"]),
                                          "val_acc": None, "test_acc": data["test_acc"]})
                    continue
                if name in ("bare", "bare_fused"):
                    fused = ["--fused"] if name == "bare_fused" else []
                    wall, rss, out = run_measured([py, str(BENCH / "bare_reference.py"), "--data-dir", str(data_dir),
                                                   "--threads", str(args.threads), *fused], cwd)
                    data = json.loads(out.strip().splitlines()[-1])
                    results[name].append({"wall": wall, "rss": rss, "epoch": steady(data["epoch_times"]),
                                          "val_acc": data["val_acc"], "test_acc": data["test_acc"]})
                    continue
                timing = cwd / "epochs.json"
                extra = ["--data.pipeline", "torchvision"] if name == "classic" else []
                wall, rss, _ = run_measured([py, "-m", "mnist_lightning", "fit", "--data.data_dir", str(data_dir),
                                             "--torch_threads", str(args.threads), *extra,
                                             "--trainer.callbacks+=epoch_timer.EpochTimer",
                                             "--trainer.callbacks.path", str(timing)], cwd)
                data = json.loads(timing.read_text())
                last = cwd / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
                _, _, out = run_measured([py, "-m", "mnist_lightning", "test", "--ckpt_path", str(last),
                                          "--data.data_dir", str(data_dir), "--trainer.enable_progress_bar", "false"], cwd)
                correct = int(re.search(r"Got (\d+) / 10000", out).group(1))
                results[name].append({"wall": wall, "rss": rss, "epoch": steady(data["epoch_times"]),
                                      "val_acc": data["val_acc"], "test_acc": correct / 10000,
                                      "figures": data["figures_seconds"] / len(data["epoch_times"])})
            print(f"repeat {repeat + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    med = {name: {k: statistics.median(r[k] for r in runs) if runs[0].get(k) is not None else None for k in runs[0]}
           for name, runs in results.items()}

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}%"

    print(f"\nMedians of {args.repeats} alternating runs; 3 epochs, batch 64, Adam 1e-3, seed 42; torch threads "
          f"{args.threads} for bare/project, torch's default for the tutorial.\n")
    print("| run | s/epoch | whole process s | peak RSS MiB | val acc | test acc |")
    print("|---|---|---|---|---|---|")
    labels = {"tutorial": "(a) tutorial script (DataLoader + ToTensor)", "bare": "(b) bare in-memory PyTorch loop",
              "bare_fused": "(b') the same, fused Adam",
              "project": "(c) project `fit`, default config", "classic": "(d) project `fit`, --data.pipeline torchvision"}
    for name, m in med.items():
        print(f"| {labels[name]} | {m['epoch']:.2f} | {m['wall']:.1f} | {m['rss']:.0f} | {pct(m['val_acc'])} | {pct(m['test_acc'])} |")
    p, b, t, c, bf = med["project"], med["bare"], med["tutorial"], med["classic"], med["bare_fused"]
    print("\n| ratio | value | goal |")
    print("|---|---|---|")
    print(f"| project s/epoch / bare s/epoch | {p['epoch'] / b['epoch']:.2f} | <= 1.5 |")
    print(f"| project s/epoch / bare+fused s/epoch (framework cost alone) | {p['epoch'] / bf['epoch']:.2f} | - |")
    print(f"| tutorial s/epoch / project s/epoch | {t['epoch'] / p['epoch']:.1f}x faster | >= 4 |")
    print(f"| classic-pipeline s/epoch / project s/epoch | {c['epoch'] / p['epoch']:.1f}x faster | (data path alone) |")
    print(f"| project whole process / tutorial whole process | {p['wall'] / t['wall']:.2f} | <= 0.5 |")
    print(f"| project peak RSS / tutorial peak RSS | {p['rss'] / t['rss']:.2f} | <= 1.0 |")
    print(f"| TensorBoard figures / project epoch (included above) | {p['figures'] / p['epoch']:.1%} "
          f"({p['figures']:.3f} s) | small |")
    same = all(r["test_acc"] == c_["test_acc"] for r, c_ in zip(results["project"], results["classic"], strict=True))
    print(f"| test accuracy, in-memory vs classic pipeline | {'identical' if same else 'DIFFERENT'} | identical |")


if __name__ == "__main__":
    main()
