"""Host lists to device tensors without a stream synchronisation.

`torch.tensor(data, device="cuda")` copies from pageable memory with a
blocking copy, which waits for everything queued on the stream: each one is
a host sync, and a step builds dozens of small tensors (token ids,
positions, metadata, sampling parameters). `to_device` stages the data in
pinned memory and copies it asynchronously instead; PyTorch's pinned-memory
allocator keeps the staging buffer alive until the copy has run. On other
devices it is `torch.tensor`.
"""
from __future__ import annotations

import torch


def to_device(data, dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """`torch.tensor(data, dtype=dtype, device=device)`, asynchronous on CUDA."""
    if device is None or torch.device(device).type != "cuda":
        return torch.tensor(data, dtype=dtype, device=device)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)
