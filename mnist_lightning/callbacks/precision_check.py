"""Say, in one line before a run starts, when its bf16 precision would be emulated on this CPU.

    python -m mnist_lightning fit --config configs/mlp_best.yaml --config configs/bf16.yaml

bf16 pays only where the hardware computes in it: GPUs, and CPUs with AVX512-BF16 or AMX-BF16
units (x86) or the BF16 extension (Arm). Elsewhere, on most laptops and many servers (AVX2 only),
every bf16 matrix product is emulated: the best recipe's training step took 7x as long as in fp32 on
an AVX2 CPU (`benchmarks/precision.py`, docs/results.md). The run goes on as asked; the line names the fix.
The CLI adds `PrecisionCheck` to every run (`mnist_lightning/cli/trainer_setup.py`), as it does ResumeCheckpoint.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

# torch.cpu.get_capabilities() names of the instructions that compute in bf16 (not merely convert to it).
NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bf16 natively. A torch without `torch.cpu.get_capabilities` (before 2.14)
    cannot tell: it counts as native, so that nothing is claimed that was not measured."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:
        return True
    capabilities = get_capabilities()
    return any(capabilities.get(name, False) is True for name in NATIVE_BF16)


def emulated_bf16_message(precision: str) -> str:
    """The one line a run on a CPU without bf16 units prints: what happens and the fix."""
    return (f"precision {precision} on this CPU is emulated (it has no AVX512-BF16, AMX or Arm BF16 units): each "
            f"step takes several times as long as in fp32. Use --trainer.precision 32-true (or leave out "
            f"configs/bf16.yaml).")


class PrecisionCheck(Callback):
    """At setup, one warning when the run computes in bf16 on a CPU that emulates it; otherwise nothing."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        precision = str(trainer.precision)
        if (
            precision.startswith("bf16")
            and isinstance(trainer.accelerator, CPUAccelerator)
            and not cpu_has_native_bf16()
        ):
            rank_zero_warn(emulated_bf16_message(precision))
