"""engine/transfer.fetch: several tensors back to the host in one read, values unchanged."""
from __future__ import annotations

import torch

from engine.transfer import fetch
from tests.engine.host_sync import SyncCounter


def test_fetch_round_trips_dtypes_and_shapes_in_one_transfer():
    tensors = {
        "tokens": torch.tensor([0, 49151, 2**40 + 3]),
        "flags": torch.tensor([True, False]),
        "logprobs": torch.randn(3, 2, dtype=torch.float32),
        "scalar": torch.tensor(7, dtype=torch.int32),
        "empty": torch.zeros(2, 0),
    }
    with SyncCounter() as counter:
        host = fetch(tensors)
        assert counter.total == 1
    for name, tensor in tensors.items():
        assert host[name] == tensor.tolist(), name
    assert all(isinstance(v, int) for v in host["tokens"])
    assert fetch({}) == {}
