"""A run whose bf16 would be emulated on this CPU says so in one line before it starts; others say nothing.

The probe `cpu_has_native_bf16` is monkeypatched, so the tests hold on any CPU; the fits run in this
process (`run_cli`), through the real command line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_ARGS, run_cli

from mnist_lightning.callbacks import precision_check
from mnist_lightning.callbacks.precision_check import cpu_has_native_bf16, emulated_bf16_message


def _said(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "is emulated" in str(w.message)]


@pytest.mark.parametrize(("precision", "native", "warned"), [
    ("bf16-mixed", False, True),   # an AVX2-only CPU: the one line
    ("bf16-mixed", True, False),   # AVX512-BF16, AMX or Arm BF16: bf16 pays, nothing to say
    ("32-true", False, False),     # fp32 is never emulated
])
def test_a_fit_says_in_one_line_when_its_bf16_would_be_emulated(precision: str, native: bool, warned: bool,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                shared_tiny_data: Path, tmp_path: Path) -> None:
    monkeypatch.setattr(precision_check, "cpu_has_native_bf16", lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)  # each run's line, even where an earlier test printed it
        result = run_cli("fit", "--data.data_dir", str(shared_tiny_data), *TINY_ARGS, "--torch_threads", "1",
                         "--trainer.accelerator", "cpu", "--trainer.precision", precision, "--trainer.max_epochs", "1",
                         "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    said = _said(caught)
    if warned:
        assert said == [emulated_bf16_message(precision)]
        assert "\n" not in said[0] and "--trainer.precision 32-true" in said[0]  # one line, with the fix
    else:
        assert said == []


@pytest.mark.parametrize(("capabilities", "native"), [
    ({"architecture": "x86_64", "avx2": True, "avx512_bf16": False, "amx_bf16": False}, False),
    ({"architecture": "x86_64", "avx2": True, "avx_ne_convert": True}, False),  # converts to bf16, computes in fp32
    ({"architecture": "x86_64", "avx512_f": True, "avx512_bf16": True}, True),
    ({"architecture": "x86_64", "amx_tile": True, "amx_bf16": True}, True),
    ({"architecture": "arm64", "neon": True, "bf16": True}, True),
    ({"architecture": "arm64", "neon": True, "bf16": False, "sve_max_length": 256}, False),
])
def test_native_bf16_is_read_from_the_cpus_instruction_sets(capabilities: dict, native: bool,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert cpu_has_native_bf16() is native
