"""gpu_probe: Lightning's NVML-based CUDA check is turned off only where it cannot work."""

from __future__ import annotations

import pytest
import torch

from mnist_lightning import gpu_probe


@pytest.fixture
def cuda_build(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)


def test_flag_is_turned_off_where_the_nvidia_library_cannot_be_loaded(cuda_build, monkeypatch):
    monkeypatch.setenv(gpu_probe.NVML_FLAG, "1")
    monkeypatch.setattr(gpu_probe, "nvml_loadable", lambda: False)
    assert gpu_probe.skip_nvml_check_without_driver()
    assert gpu_probe.os.environ[gpu_probe.NVML_FLAG] == "0"


def test_flag_stays_where_the_nvidia_library_loads(cuda_build, monkeypatch):
    monkeypatch.setenv(gpu_probe.NVML_FLAG, "1")
    monkeypatch.setattr(gpu_probe, "nvml_loadable", lambda: True)
    assert not gpu_probe.skip_nvml_check_without_driver()
    assert gpu_probe.os.environ[gpu_probe.NVML_FLAG] == "1"


@pytest.mark.parametrize("value", [None, "0"])
def test_a_flag_not_set_to_1_is_left_alone(value, cuda_build, monkeypatch):
    if value is None:
        monkeypatch.delenv(gpu_probe.NVML_FLAG, raising=False)
    else:
        monkeypatch.setenv(gpu_probe.NVML_FLAG, value)
    monkeypatch.setattr(gpu_probe, "nvml_loadable", lambda: False)
    assert not gpu_probe.skip_nvml_check_without_driver()
    assert gpu_probe.os.environ.get(gpu_probe.NVML_FLAG) == value

