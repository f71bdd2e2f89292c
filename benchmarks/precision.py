"""Time one training step of the best recipe's net in fp32 and in bf16 autocast, on this CPU.

    python benchmarks/precision.py [--batch-size 128] [--threads 2] [--steps 30]

Whether `--trainer.precision bf16-mixed` pays on a CPU depends on its bf16 units (AVX512-BF16, AMX,
Arm's BF16): without them every bf16 matrix product is emulated. This measures that directly,
without Lightning or data: configs/mlp_best.yaml's net (784 -> [1024 -> BN -> ReLU -> dropout] x 2
-> 10, input dropout) and AdamW, on random batches, forward + backward + step, first under fp32,
then under `torch.autocast("cpu", torch.bfloat16)` (what Lightning's bf16-mixed plugin does on a CPU).
It prints the median milliseconds per step of each (after `--warmup` untimed steps), wall-clock and CPU
(the process's, all threads), and their ratios. Quote `cat /proc/loadavg` beside the figures: on a shared
machine the wall time grows with the load, while single-threaded CPU time stays close to the idle wall time.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F  # noqa: N812

from mnist_lightning.callbacks.precision_check import cpu_has_native_bf16
from mnist_lightning.model import MLP


def step_times(batch_size: int, steps: int, warmup: int, bf16: bool) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of each timed training step (fresh net and optimizer, seed 0)."""
    torch.manual_seed(0)
    net = MLP(hidden_sizes=[1024, 1024], batch_norm=True, dropout=0.2, input_dropout=0.15)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2.12e-3, weight_decay=5e-5)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    wall, cpu = [], []
    for i in range(warmup + steps):
        start, start_cpu = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (the recipe's torch_threads)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {cpu_has_native_bf16()}, threads {args.threads}, batch {args.batch_size}")
    medians = {}
    for name, bf16 in (("fp32", False), ("bf16-mixed", True)):
        wall, cpu = step_times(args.batch_size, args.steps, args.warmup, bf16)
        medians[name] = statistics.median(wall), statistics.median(cpu)
        print(f"{name:>10}: {1000 * medians[name][0]:7.1f} ms wall per step (median of {args.steps}; min "
              f"{1000 * min(wall):.1f}, max {1000 * max(wall):.1f}), {1000 * medians[name][1]:7.1f} ms CPU")
    wall_ratio, cpu_ratio = (medians["bf16-mixed"][i] / medians["fp32"][i] for i in (0, 1))
    print(f"bf16-mixed / fp32: {wall_ratio:.2f}x wall, {cpu_ratio:.2f}x CPU")


if __name__ == "__main__":
    main()
