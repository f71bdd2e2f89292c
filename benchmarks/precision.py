"""Time one training step of the best recipe's net in fp32 and in bf16 autocast, on this CPU.

    python benchmarks/precision.py [--batch-size 128] [--threads 2] [--steps 30]

Whether `--trainer.precision bf16-mixed` pays on a CPU depends on its bf16 units (AVX512-BF16, AMX,
Arm's BF16): without them every bf16 matrix product is emulated. This measures that directly,
without Lightning or data: configs/mlp_best.yaml's net (784 -> [1024 -> BN -> ReLU -> dropout] x 2
-> 10, input dropout) and AdamW, on random batches, forward + backward + step, first under fp32,
then under `torch.autocast("cpu", torch.bfloat16)` (what Lightning's bf16-mixed plugin does on a CPU).
It prints the median milliseconds per step of each (after `--warmup` untimed steps) and their ratio.
Quote `cat /proc/loadavg` beside the figures: the machine may be shared.
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


def step_times(batch_size: int, steps: int, warmup: int, bf16: bool) -> list[float]:
    """Seconds of each timed training step (fresh net and optimizer, seed 0)."""
    torch.manual_seed(0)
    net = MLP(hidden_sizes=[1024, 1024], batch_norm=True, dropout=0.2, input_dropout=0.15)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2.12e-3, weight_decay=5e-5)
    x = torch.randn(batch_size, 1, 28, 28)
    y = torch.randint(0, 10, (batch_size,))
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


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
        times = step_times(args.batch_size, args.steps, args.warmup, bf16)
        medians[name] = statistics.median(times)
        print(f"{name:>10}: {1000 * medians[name]:7.1f} ms per step (median of {args.steps}; "
              f"min {1000 * min(times):.1f}, max {1000 * max(times):.1f})")
    print(f"bf16-mixed / fp32: {medians['bf16-mixed'] / medians['fp32']:.2f}x")


if __name__ == "__main__":
    main()
