"""Stop torch from probing for NVIDIA's management library on every optimizer step where there is none.

`import pytorch_lightning` sets PYTORCH_NVML_BASED_CUDA_CHECK=1, so that asking whether CUDA is
available does not initialise CUDA before DDP forks its processes. torch's Adam and AdamW ask on
every `step()` (`torch.accelerator.current_accelerator(check_available=True)`). With a CUDA build
of torch on a machine without the NVIDIA driver, each such check tries to load libnvidia-ml, fails,
and falls back to `cudaGetDeviceCount` anyway: ~40-110 us per optimizer step measured on a 2-core
CPU, 10-15% of a bare training step of the 784-50-10 net. Where the library cannot be loaded the
NVML-based check can never succeed, so turning it off changes no answer and saves the failed load.
"""

from __future__ import annotations

import ctypes
import os

import torch

NVML_FLAG = "PYTORCH_NVML_BASED_CUDA_CHECK"
NVML_LIBRARY = "libnvidia-ml.so.1"  # what torch.cuda loads for the check


def nvml_loadable() -> bool:
    try:
        ctypes.CDLL(NVML_LIBRARY)
    except OSError:
        return False
    return True


def skip_nvml_check_without_driver() -> bool:
    """Unset the NVML-based CUDA check when it cannot work; returns whether it was unset."""
    if os.environ.get(NVML_FLAG) != "1" or not torch.backends.cuda.is_built() or nvml_loadable():
        return False
    os.environ[NVML_FLAG] = "0"
    return True
