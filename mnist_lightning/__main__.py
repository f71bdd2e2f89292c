"""`python -m mnist_lightning` (and the `mnist-lightning` script): start the command, end it cleanly.

    python -m mnist_lightning fit|validate|test|predict ...    # the LightningCLI (mnist_lightning/cli.py)
    python -m mnist_lightning export --ckpt_path CKPT --format onnx      # mnist_lightning/export.py
    python -m mnist_lightning sweep|seeds --config ...                   # mnist_lightning/experiments.py

A user's mistake (a bad value, path, file or checkpoint; Lightning's and jsonargparse's own
misconfiguration errors) ends with one line, `error: ...`, and exit code 2; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

import signal
import sys

if __name__ == "__main__":  # Ctrl+C while torch and Lightning load (seconds): exit quietly, not mid-import with a traceback
    signal.signal(signal.SIGINT, lambda signum, frame: sys.exit(128 + signum))

import os
from collections.abc import Sequence

import torch
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from mnist_lightning.cli import MNISTLightningCLI, quiet_console
from mnist_lightning.errors import UserInputError
from mnist_lightning.export import main as export_main
from mnist_lightning.resume import TrainingDiverged, TrainingInterrupted

EXTRA_COMMANDS = ("export", "sweep", "seeds", "serve")


def main(args: Sequence[str] | None = None) -> None:
    """Run one command in this process; a user's mistake ends with `error: ...` on stderr and exit code 2."""
    argv = list(sys.argv[1:] if args is None else args)
    try:
        if argv[:1] == ["export"]:
            export_main(argv[1:])
        elif argv[:1] == ["serve"]:
            from mnist_lightning.serve import main as serve_main  # LitServe loads for serve only

            serve_main(argv[1:])
        elif argv[:1] and argv[0] in EXTRA_COMMANDS:
            from mnist_lightning.experiments import main as experiments_main  # Optuna loads for sweeps only

            experiments_main(argv)
        else:
            with quiet_console():
                MNISTLightningCLI(args=None if args is None else argv)  # None: LightningCLI reads sys.argv itself
    except (UserInputError, MisconfigurationException) as err:  # the user's input: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    except TrainingInterrupted:  # saved, and the resume command printed: a further Ctrl+C must not break the exit
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl+C must not interrupt the goodbye
        print("\ninterrupted; nothing more was saved.", file=sys.stderr)
        sys.exit(130)


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
    main()


if __name__ == "__main__":
    run()
