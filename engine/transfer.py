"""One device->host transfer for several result tensors.

On CUDA every read of device values by the host waits for the device to
finish its queue; an engine step may pay that at most twice (issue 12):
once for the target's results and once for the drafter's drafts. `fetch`
packs tensors of any dtype and shape into one float64 vector, reads it with
a single `.tolist()`, and cuts it back into nested lists. float64 holds
every float32 value and every integer below 2**53 exactly, so token ids,
counts and float32 logprobs come back unchanged.
"""
from __future__ import annotations

import torch


def fetch(tensors: dict[str, torch.Tensor]) -> dict[str, list]:
    """{name: tensor} -> {name: nested list of Python numbers (int for
    integer and bool tensors)} in one transfer."""
    if not tensors:
        return {}
    device = next(iter(tensors.values())).device
    flat = torch.cat([t.reshape(-1).to(device=device, dtype=torch.float64) for t in tensors.values()])
    values = flat.tolist()
    result, start = {}, 0
    for name, tensor in tensors.items():
        chunk = values[start: start + tensor.numel()]
        start += tensor.numel()
        if not tensor.is_floating_point():
            chunk = [int(v) for v in chunk]
        result[name] = _nest(chunk, list(tensor.shape))
    return result


def _nest(flat: list, shape: list[int]):
    """A flat list -> nested lists of `shape` (a scalar for shape [])."""
    if not shape:
        return flat[0]
    if len(shape) == 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_nest(flat[i * step: (i + 1) * step], shape[1:]) for i in range(shape[0])]
