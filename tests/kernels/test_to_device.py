"""to_device: torch.tensor's result (values, dtype, device, shape) on every
device; the pinned, non-blocking copy only for CUDA targets."""
from __future__ import annotations

import types

import pytest
import torch

import kernels.to_device as module
from kernels.to_device import to_device

CASES = [([3, 1, 4], None), ([3, 1, 4], torch.long), ([0.5, -2.0], torch.float32),
         ([[1, 2], [3, 4]], torch.int32), ([True, False], torch.bool), ([2.5, 1.0], torch.float64)]


@pytest.mark.parametrize("data, dtype", CASES)
@pytest.mark.parametrize("device", [None, "cpu", torch.device("cpu")])
def test_same_tensor_as_torch_tensor_on_the_cpu(data, dtype, device):
    # On this machine a pinned copy would raise (no pinned-memory
    # allocator), so passing also shows the plain path was taken.
    result = to_device(data, dtype, device)
    expected = torch.tensor(data, dtype=dtype)
    assert result.device.type == "cpu" and result.dtype == expected.dtype
    assert torch.equal(result, expected)


@pytest.mark.parametrize("dtype, expected", [(None, torch.float32), (torch.long, torch.long)])
def test_empty_lists(dtype, expected):
    result = to_device([], dtype, "cpu")
    assert result.shape == (0,) and result.dtype == expected
    assert to_device([[], []], dtype).shape == (2, 0)


def test_other_devices_keep_the_plain_path():
    result = to_device([1, 2, 3], torch.long, "meta")
    assert result.device.type == "meta" and result.shape == (3,) and result.dtype == torch.long


class _Recorder:
    """Stands in for torch in kernels.to_device, recording how it is called."""

    def __init__(self):
        self.calls = []

    def tensor(self, data, dtype=None, device=None, pin_memory=False):
        self.calls.append(("tensor", {"dtype": dtype, "device": device, "pin_memory": pin_memory}))
        return self

    def to(self, device, non_blocking=False):
        self.calls.append(("to", {"device": device, "non_blocking": non_blocking}))
        return self


@pytest.fixture
def recorder(monkeypatch):
    recorder = _Recorder()
    fake_torch = types.SimpleNamespace(tensor=recorder.tensor, device=torch.device)
    monkeypatch.setattr(module, "torch", fake_torch)
    return recorder


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_targets_stage_in_pinned_memory_and_copy_without_blocking(recorder, device):
    to_device([1, 2], torch.long, device)
    assert recorder.calls == [("tensor", {"dtype": torch.long, "device": None, "pin_memory": True}),
                              ("to", {"device": device, "non_blocking": True})]


@pytest.mark.parametrize("device", [None, "cpu", "meta"])
def test_other_targets_are_one_plain_torch_tensor(recorder, device):
    to_device([1, 2], torch.long, device)
    assert recorder.calls == [("tensor", {"dtype": torch.long, "device": device, "pin_memory": False})]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("data, dtype", CASES + [([], torch.long)])
def test_values_dtype_and_device_on_cuda(data, dtype):
    result = to_device(data, dtype, "cuda")
    expected = torch.tensor(data, dtype=dtype)
    assert result.device.type == "cuda" and result.dtype == expected.dtype
    assert torch.equal(result.cpu(), expected)  # .cpu() waits for the asynchronous copy
