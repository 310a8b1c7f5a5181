"""engine/spec/heads/layers.py: masked grouped-query attention and RoPE on
position grids, the pieces every head family builds on."""
from __future__ import annotations

import torch

from engine.spec.heads.config import HeadConfig
from engine.spec.heads.layers import HeadAttention, Rotary, attend


def test_attend_is_softmax_attention_over_the_allowed_keys():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 3, 2, 8), torch.randn(1, 3, 2, 8)
    mask = torch.tensor([[[True, False, True], [False, True, False]]])
    out = attend(q, k, v, mask).view(1, 2, 4, 8)
    for query, allowed in enumerate(mask[0]):
        for head in range(4):
            kv_head = head // 2  # grouped-query: two query heads per key/value head
            keys, values = k[0, allowed, kv_head], v[0, allowed, kv_head]
            weights = torch.softmax(keys @ q[0, query, head] / 8 ** 0.5, dim=0)
            torch.testing.assert_close(out[0, query, head], weights @ values, atol=1e-5, rtol=1e-5)


def test_keys_alone_equal_the_keys_of_the_full_projection(tiny_target):
    config = HeadConfig.for_target("dflash", tiny_target.config, block_size=3)
    attention = HeadAttention(config, in_dim=config.hidden_size)
    x = torch.randn(2, 5, config.hidden_size)
    cos, sin = Rotary(config)(torch.arange(5).repeat(2, 1), torch.float32)
    assert cos.shape == (2, 5, 1, config.head_dim)
    q, k, v = attention.qkv(x, cos, sin)
    k_only, v_only = attention.kv(x, cos, sin)
    assert q.shape == (2, 5, config.num_heads, config.head_dim)
    torch.testing.assert_close(k_only, k)
    torch.testing.assert_close(v_only, v)
