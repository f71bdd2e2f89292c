"""A bare PyTorch loop over in-memory tensors: the floor a framework run is compared against.

Reference (b) of benchmarks/speed.py: same net, optimizer, batch, seed and train/val split as the
project's default config, batches gathered by index from one uint8 tensor, no Lightning, no logging.
(It imports mnist_lightning only to read the IDX files; that import also turns off, where there is
no NVIDIA driver, the NVML probe that Lightning's import would otherwise add to every Adam step:
see mnist_lightning/gpu_probe.py. Without that, this loop would be ~15% slower than a true bare loop.)
    python benchmarks/bare_reference.py --data-dir ../shared/data/mnist --threads 1
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mnist_lightning.data import split_indices
from mnist_lightning.idx import DATASETS
from mnist_lightning.idx import load_split


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--fused", action="store_true", help="fused Adam, as the project uses")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    spec = DATASETS["mnist"]
    images, labels = load_split(Path(args.data_dir), spec, train=True)
    test_images, test_labels = load_split(Path(args.data_dir), spec, train=False)
    train_idx, val_idx = split_indices(len(images), 5000, seed=42)
    x, y = images[train_idx], labels[train_idx]

    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 50), nn.ReLU(), nn.Linear(50, 10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=args.fused or None)
    generator = torch.Generator().manual_seed(args.seed)
    epoch_times = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for i in range(0, len(x), 64):
            index = order[i : i + 64]
            batch = x[index].unsqueeze(1).float().div(255)
            loss = F.cross_entropy(model(batch), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)

    with torch.no_grad():
        def accuracy(imgs: torch.Tensor, targets: torch.Tensor) -> float:
            return (model(imgs.unsqueeze(1).float().div(255)).argmax(1) == targets).float().mean().item()

        result = {"epoch_times": epoch_times, "val_acc": accuracy(images[val_idx], labels[val_idx]),
                  "test_acc": accuracy(test_images, test_labels)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
