r"""SHA-256 digests of a run's trained weights, to prove that a code change trains bit for bit the same.

    python scripts/weights_digest.py -- --config configs/seed.yaml --trainer.max_epochs 1 \
        --data.data_dir ../shared/data/mnist
    python scripts/weights_digest.py --ckpt lightning_logs/version_0/checkpoints/last.ckpt

The first form runs `python -m mnist_lightning fit` with the arguments after `--` as a separate process, in
the current folder (so relative paths mean what they mean on the command line; the run gets its own
`lightning_logs/version_N` as any fit does), and digests the `last.ckpt` that fit names in its
`Last checkpoint: PATH` line. The second digests an existing checkpoint.

It prints one line per tensor of the checkpoint's `state_dict`, sorted by key: the SHA-256 of the tensor's
raw bytes, its key, dtype and shape. The last line is one digest over all of those lines, so two runs
trained alike print the same last line, and a differing line above it says which tensor moved.
The checkpoint is read with `torch.load(weights_only=True)` and nothing from the package is imported,
so the script digests checkpoints of any version of the package in the same way.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

LAST_CHECKPOINT_LINE = re.compile(r"^Last checkpoint: (.+)$", re.MULTILINE)


def tensor_digest(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes in memory order (any dtype, bf16 included)."""
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def digest_lines(state_dict: dict[str, torch.Tensor]) -> list[str]:
    """One line per tensor, sorted by key, then the combined digest of those lines."""
    lines = [f"{tensor_digest(value)}  {key}  {str(value.dtype).removeprefix('torch.')}  {list(value.shape)}"
             for key, value in sorted(state_dict.items())]
    combined = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return [*lines, f"{combined}  ALL ({len(lines)} tensors)"]


def digest_checkpoint(path: Path) -> list[str]:
    """The digest lines of a Lightning checkpoint, headed by its epoch and step."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    header = f"# {path} (epoch {checkpoint.get('epoch')}, global_step {checkpoint.get('global_step')})"
    return [header, *digest_lines(checkpoint["state_dict"])]


def fit_last_checkpoint(fit_args: Sequence[str]) -> Path:
    """Run `python -m mnist_lightning fit FIT_ARGS` and return the last.ckpt it reports."""
    command = [sys.executable, "-m", "mnist_lightning", "fit", *fit_args]
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    found = LAST_CHECKPOINT_LINE.search(result.stdout)
    if result.returncode != 0 or found is None:
        sys.stderr.write(result.stdout)
        raise SystemExit(f"error: the fit failed (exit {result.returncode}) or printed no 'Last checkpoint:' line")
    return Path(found.group(1).strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--ckpt", type=Path, help="digest this checkpoint instead of running a fit")
    parser.add_argument("fit_args", nargs="*", help="after `--`: the arguments of `python -m mnist_lightning fit`")
    args = parser.parse_args(argv)
    if (args.ckpt is None) == (not args.fit_args):
        parser.error("give either --ckpt PATH or `-- FIT ARGS`")
    if args.ckpt is not None:
        print("\n".join(digest_checkpoint(args.ckpt)))
        return 0
    print("# fit " + " ".join(args.fit_args))
    print("\n".join(digest_checkpoint(fit_last_checkpoint(args.fit_args))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
