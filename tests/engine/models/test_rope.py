"""engine/models/rope.py: rotary embeddings and HF's rope_scaling variants."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from engine.config import ModelConfig
from engine.models.rope import RotaryEmbedding, apply_rope, rope_inv_freq

BASE = ModelConfig(vocab_size=10, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2,
                   num_kv_heads=2, head_dim=16, rope_theta=10000.0, max_position_embeddings=64)


def with_scaling(**scaling):
    return dataclasses.replace(BASE, rope_scaling=scaling)


def test_default_frequencies_and_linear_scaling():
    plain, scale = rope_inv_freq(BASE)
    assert scale == 1.0 and plain.shape == (8,)
    torch.testing.assert_close(plain, 1.0 / 10000.0 ** (torch.arange(0, 16, 2).float() / 16))
    linear, _ = rope_inv_freq(with_scaling(rope_type="linear", factor=4.0))
    torch.testing.assert_close(linear, plain / 4)


def test_llama3_stretches_low_frequencies_only():
    plain, _ = rope_inv_freq(BASE)
    scaled, _ = rope_inv_freq(with_scaling(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                           high_freq_factor=4.0, original_max_position_embeddings=64))
    assert scaled[0] == plain[0]  # the highest frequency is kept
    torch.testing.assert_close(scaled[-1], plain[-1] / 8)  # the lowest is stretched by the factor
    assert (scaled <= plain).all()


def test_unknown_scaling_fails_loudly():
    with pytest.raises(NotImplementedError, match="longrope"):
        rope_inv_freq(with_scaling(rope_type="longrope", factor=2.0))


def test_rotation_keeps_norms_and_scores_depend_on_relative_position():
    rotary = RotaryEmbedding(BASE)
    q, k = torch.randn(1, 1, 16), torch.randn(1, 1, 16)

    def rotated(x, position):
        cos, sin = rotary(torch.tensor([position]), torch.float32)
        return apply_rope(x, cos, sin)

    torch.testing.assert_close(rotated(q, 0), q)
    torch.testing.assert_close(rotated(q, 9).norm(), q.norm())
    near = (rotated(q, 7) * rotated(k, 3)).sum()
    far = (rotated(q, 24) * rotated(k, 20)).sum()
    torch.testing.assert_close(near, far, atol=1e-4, rtol=1e-4)


def test_the_cached_table_gives_the_rows_of_any_positions_in_any_order():
    rotary = RotaryEmbedding(BASE)
    cos_all, sin_all = rotary(torch.arange(40), torch.float32)
    cos, sin = rotary(torch.tensor([39, 2, 17]), torch.float32, max_position=39)
    assert cos.shape == (3, 1, 16)
    torch.testing.assert_close(cos, cos_all[[39, 2, 17]])
    torch.testing.assert_close(sin, sin_all[[39, 2, 17]])
