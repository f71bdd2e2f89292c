"""`python -m mnist_lightning` (and the `mnist-lightning` script): start the command, end it cleanly.

    python -m mnist_lightning fit|validate|test|predict ...    # the LightningCLI (mnist_lightning/cli/cli.py)
    python -m mnist_lightning export --ckpt_path CKPT --format onnx      # mnist_lightning/export.py
    python -m mnist_lightning sweep|seeds --config ...                   # mnist_lightning/sweeps/command.py

A user's mistake (a bad value, path, file or checkpoint; Lightning's and jsonargparse's own
misconfiguration errors) ends with one line, `error: ...`, and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys

# Ctrl+C while torch and Lightning load (seconds): exit quietly, not mid-import with a traceback.
if __name__ == "__main__":
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import os
from collections.abc import Sequence

import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning.callbacks.resume import TrainingDiverged, TrainingInterrupted
from mnist_lightning.cli.cli import MNISTLightningCLI
from mnist_lightning.cli.console import quiet_console
from mnist_lightning.errors import UserInputError
from mnist_lightning.export import main as export_main

EXTRA_COMMANDS = ("export", "sweep", "seeds", "serve")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command in this process and return its exit code: 0, 2 with one line `error: ...` on stderr
    for a user's mistake, 1 for a diverged loss, 128 + N after signal N, 130 after Ctrl+C."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[:1] == ["export"]:
            export_main(args[1:])
        elif args[:1] == ["serve"]:
            from mnist_lightning.serve import main as serve_main  # LitServe loads for serve only

            serve_main(args[1:])
        elif args[:1] and args[0] in EXTRA_COMMANDS:
            from mnist_lightning.sweeps.command import main as experiments_main  # Optuna loads for sweeps only

            experiments_main(args)
        else:
            with quiet_console():
                MNISTLightningCLI(args=None if argv is None else args)  # None: LightningCLI reads sys.argv itself
    except (UserInputError, MisconfigurationException) as err:  # the user's input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except TrainingInterrupted as stop:  # saved, resume command printed: a further Ctrl+C must not break the exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return int(stop.code)
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not interrupt the goodbye
        print("\ninterrupted; nothing more was saved.", file=sys.stderr)
        return 130
    except SystemExit as exit_:  # argparse's usage errors (2) and --help (0); a message exits 1, as Python's would
        if exit_.code is None or isinstance(exit_.code, int):
            return exit_.code or 0
        print(exit_.code, file=sys.stderr)
        return 1
    return 0


def skip_failing_nvml_check() -> None:
    """Turn off torch's NVML-based CUDA check where NVIDIA's library cannot load, so it cannot succeed anyway.

    `import pytorch_lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1; torch's Adam then asks on every
    step whether CUDA is available, and on a machine without the driver each ask tries to dlopen
    libnvidia-ml and fails: +26% on the bare tutorial-sized loop, measured (docs/speed.md). The answer is
    the same without the check.
    """
    import ctypes

    if os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") != "1" or not torch.backends.cuda.is_built():
        return
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"


def run() -> None:
    """The process's entry point (`python -m mnist_lightning`, `mnist-lightning`)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)  # from here on Ctrl+C is Python's KeyboardInterrupt
    skip_failing_nvml_check()
    sys.exit(main())


if __name__ == "__main__":
    run()
