"""Run-to-run statistics: train a config with N seeds, report mean and std of val/test accuracy.

    python benchmarks/seeds.py --config configs/seed.yaml --seeds 0 1 2 [--data-dir ../shared/data/mnist]
    python benchmarks/seeds.py --config configs/mlp_best.yaml --seeds 0 1 2

Each seed runs `python -m mnist_lightning fit --config CONFIG --seed_everything SEED` in its own
temporary folder, then `test` on the final weights (last.ckpt, as the tutorial evaluates its final
model). Prints one line per seed and a Markdown summary row for README's results table. Extra
arguments after `--` go to `fit` (e.g. `-- --trainer.max_epochs 5`).
"""

from __future__ import annotations

import argparse
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


def run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'benchmarks'}"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed ({result.returncode}): {' '.join(cmd)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "mnist")
    args, fit_extra = parser.parse_known_args()
    fit_extra = [a for a in fit_extra if a != "--"]
    config, data_dir, py = args.config.resolve(), args.data_dir.resolve(), sys.executable

    rows = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as tmp:
            cwd = Path(tmp)
            timing = cwd / "epochs.json"
            wall, _ = run([py, "-m", "mnist_lightning", "fit", "--config", str(config), "--data.data_dir", str(data_dir),
                           "--seed_everything", str(seed), "--trainer.enable_progress_bar", "false",
                           "--trainer.callbacks+=epoch_timer.EpochTimer", "--trainer.callbacks.path", str(timing),
                           *fit_extra], cwd)
            val_acc = json.loads(timing.read_text())["val_acc"]
            last = cwd / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
            _, out = run([py, "-m", "mnist_lightning", "test", "--ckpt_path", str(last), "--data.data_dir", str(data_dir),
                          "--trainer.enable_progress_bar", "false", "--trainer.logger", "false"], cwd)
            test_acc = int(re.search(r"Got (\d+) / 10000", out).group(1)) / 100
        rows.append((seed, 100 * val_acc, test_acc, wall))
        print(f"seed {seed}: val {100 * val_acc:.2f}%  test {test_acc:.2f}%  fit wall {wall:.1f} s", flush=True)

    def mean_std(values: list[float]) -> str:
        return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"

    vals, tests, walls = ([r[i] for r in rows] for i in (1, 2, 3))
    print("\n| config | seeds | val acc % (mean ± std) | test acc % (mean ± std) | test min-max | fit wall s (mean) |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.config} | {' '.join(map(str, args.seeds))} | {mean_std(vals)} | {mean_std(tests)} | "
          f"{min(tests):.2f}-{max(tests):.2f} | {statistics.mean(walls):.0f} |")


if __name__ == "__main__":
    main()
