"""Accelerator utilisation and memory for /metrics (NVML, CUDA only)."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache


@dataclass
class DeviceReading:
    utilization: float  # 0-1
    memory_used: int
    memory_total: int


@lru_cache(maxsize=None)
def _nvml_handle(index: int):
    import pynvml  # from nvidia-ml-py, the `cuda` extra

    pynvml.nvmlInit()
    return pynvml.nvmlDeviceGetHandleByIndex(index)


def read_device_stats(device: str) -> DeviceReading | None:
    """None on CPU. On CUDA without nvidia-ml-py this raises: install the
    `cuda` extra rather than silently exporting nothing."""
    if not str(device).startswith("cuda"):
        return None
    import pynvml

    index = int(str(device).partition(":")[2] or 0)
    handle = _nvml_handle(index)
    util = pynvml.nvmlDeviceGetUtilizationRates(handle)
    mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
    return DeviceReading(util.gpu / 100.0, int(mem.used), int(mem.total))
