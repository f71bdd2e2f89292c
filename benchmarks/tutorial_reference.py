"""The plain-PyTorch tutorial, as written: torchvision MNIST + ToTensor, DataLoader, 784-50-10, Adam.

Run by benchmarks/speed.py as reference (a). Prints one JSON line with per-epoch training times
(wall and CPU; the CPU time sums torch's threads, by default one per core) and the accuracies the
tutorial's `check_accuracy` computes. The timing and the command line are the only additions;
`--threads 1` (not the tutorial's) gives a reference that a busy shared machine disturbs less.
    python benchmarks/tutorial_reference.py --root DIR_WITH_MNIST_RAW --seed 42 [--threads 1]
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F  # noqa: N812 - the tutorial's spelling
import torchvision.datasets as datasets
import torchvision.transforms as transforms
from torch import nn, optim
from torch.utils.data import DataLoader


class NN(nn.Module):
    def __init__(self, input_size, num_classes):
        super().__init__()
        self.fc1 = nn.Linear(input_size, 50)
        self.fc2 = nn.Linear(50, num_classes)

    def forward(self, x):
        x = F.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def check_accuracy(loader, model):
    num_correct = 0
    num_samples = 0
    model.eval()
    with torch.no_grad():
        for x, y in loader:
            x = x.reshape(x.shape[0], -1)
            scores = model(x)
            _, predictions = scores.max(1)
            num_correct += (predictions == y).sum()
            num_samples += predictions.size(0)
    model.train()
    return num_correct.item() / num_samples


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, as the tutorial)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    input_size, num_classes, learning_rate, batch_size = 784, 10, 0.001, 64
    train_dataset = datasets.MNIST(root=args.root, train=True, transform=transforms.ToTensor(), download=False)
    train_loader = DataLoader(dataset=train_dataset, batch_size=batch_size, shuffle=True)
    test_dataset = datasets.MNIST(root=args.root, train=False, transform=transforms.ToTensor(), download=False)
    test_loader = DataLoader(dataset=test_dataset, batch_size=batch_size, shuffle=True)

    model = NN(input_size=input_size, num_classes=num_classes)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.Adam(model.parameters(), lr=learning_rate)

    epoch_times, epoch_cpu_times = [], []
    for _ in range(args.epochs):
        start, start_cpu = time.perf_counter(), time.process_time()
        for data, targets in train_loader:
            data = data.reshape(data.shape[0], -1)
            scores = model(data)
            loss = criterion(scores, targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        epoch_times.append(time.perf_counter() - start)
        epoch_cpu_times.append(time.process_time() - start_cpu)

    result = {"epoch_times": epoch_times, "epoch_cpu_times": epoch_cpu_times,
              "train_acc": check_accuracy(train_loader, model), "test_acc": check_accuracy(test_loader, model)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
