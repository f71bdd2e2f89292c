"""A bare PyTorch loop over in-memory tensors: the floor a framework run is compared against.

Reference (b) of benchmarks/speed.py and benchmarks/ablation.py: same net, batch, seed and
train/val split as the project's default config, plain `torch.optim.Adam` (`--fused` for the fused
kernel the project's classes use), batches gathered by index from one uint8 tensor, no Lightning
loop, no logging, no validation.
    python benchmarks/bare_reference.py --data-dir ../shared/data/mnist --threads 1

It imports mnist_lightning.idx and .data only to read the IDX files and draw the same split; the
latter imports pytorch_lightning, which sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that torch's Adam
would ask NVML on every step whether CUDA is available (a failed dlopen each time on a machine
without the NVIDIA driver). It therefore calls the CLI's own `skip_failing_nvml_check()`
(mnist_lightning/__main__.py), as `python -m mnist_lightning` does, so that this is a true bare loop;
`--keep-nvml-check` leaves the probe on, to measure what that saves.
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mnist_lightning.__main__ import skip_failing_nvml_check
from mnist_lightning.data.datamodule import split_order
from mnist_lightning.data.idx import DATASETS, load_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fused", action="store_true", help="fused Adam, as the project uses")
    parser.add_argument("--keep-nvml-check", action="store_true", help="leave the NVML probe on (see the docstring)")
    parser.add_argument("--device", default="cpu",
                        help="cuda: data, net and optimizer on the GPU (scripts/check_gpu.sh)")
    args = parser.parse_args()
    if not args.keep_nvml_check:
        skip_failing_nvml_check()  # after pytorch_lightning's import (via mnist_lightning.data): see the docstring
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    spec = DATASETS["mnist"]
    images, labels = load_split(Path(args.data_dir), spec, train=True)
    test_images, test_labels = load_split(Path(args.data_dir), spec, train=False)
    order = split_order(len(images), seed=42)  # the data module's split: the last 5000 are validation
    train_idx, val_idx = order[:-5000], order[-5000:]
    device = torch.device(args.device)
    x, y = images[train_idx].to(device), labels[train_idx].to(device)

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=args.fused or None)
    generator = torch.Generator().manual_seed(args.seed)
    epoch_times, epoch_cpu_times = [], []
    for _ in range(args.epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            index = order[i : i + 64].to(device)
            batch = x[index].unsqueeze(1).float().div(255)
            loss = F.cross_entropy(model(batch), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()  # the epoch ends when the GPU's queue is done
        epoch_times.append(time.perf_counter() - start)
        epoch_cpu_times.append(time.process_time() - start_cpu)

    with torch.no_grad():
        def accuracy(imgs: torch.Tensor, targets: torch.Tensor) -> float:
            imgs, targets = imgs.to(device), targets.to(device)
            return (model(imgs.unsqueeze(1).float().div(255)).argmax(1) == targets).float().mean().item()

        result = {"epoch_times": epoch_times, "epoch_cpu_times": epoch_cpu_times,
                  "val_acc": accuracy(images[val_idx], labels[val_idx]),
                  "test_acc": accuracy(test_images, test_labels)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
