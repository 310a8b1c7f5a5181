"""engine/kv_cache.py: the paged KV memory."""
from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.kv_cache import allocate_kv_caches, kv_bytes_per_token

CONFIG = ModelConfig(vocab_size=10, hidden_size=16, intermediate_size=32, num_layers=3, num_heads=4,
                     num_kv_heads=2, head_dim=4)


def test_one_zeroed_pair_per_layer_in_block_layout():
    caches = allocate_kv_caches(CONFIG, num_blocks=5, block_size=8, dtype=torch.float32, device="cpu")
    assert len(caches) == 3
    for k, v in caches:
        assert k.shape == v.shape == (5, 8, 2, 4) and not k.any() and not v.any()
        assert k.data_ptr() != v.data_ptr()


def test_a_prefix_of_the_layers_for_a_self_draft_model():
    assert len(allocate_kv_caches(CONFIG, 5, 8, torch.float32, "cpu", num_layers=1)) == 1
    with pytest.raises(ValueError, match="num_layers"):
        allocate_kv_caches(CONFIG, 5, 8, torch.float32, "cpu", num_layers=4)
    with pytest.raises(ValueError, match="positive"):
        allocate_kv_caches(CONFIG, 0, 8, torch.float32, "cpu")


def test_bytes_per_token_counts_keys_and_values_of_every_layer():
    assert kv_bytes_per_token(CONFIG, torch.float32) == 2 * 3 * 2 * 4 * 4
    assert kv_bytes_per_token(CONFIG, torch.bfloat16) == 2 * 3 * 2 * 4 * 2
