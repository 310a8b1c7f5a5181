"""Attention pieces every head family builds on."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.inference_kernels import Linear
from engine.models.llama import RotaryEmbedding, apply_rope
from engine.spec.heads.config import HeadConfig


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with an explicit boolean mask.

    q: [B, Q, nh, hd]; k, v: [B, K, kvh, hd]; mask: [B, Q, K] (True = may
    attend; every query row must allow at least one key).
    Returns [B, Q, nh * hd].
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask[:, None], enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


class HeadAttention(nn.Module):
    """Q/K/V/O projections with RoPE, named like the target's attention so
    block drafters can start from copies of target layers."""

    def __init__(self, config: HeadConfig, in_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = Linear(in_dim, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, Q, in_dim]; cos/sin [B, Q, 1, hd] -> q [B,Q,nh,hd], k, v [B,Q,kvh,hd]."""
        b, t = x.shape[:2]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(q.view(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        return q, k, v.view(b, t, self.num_kv_heads, self.head_dim)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys and values only (context entries that never query)."""
        b, t = x.shape[:2]
        weight = self.qkv_proj.weight[self.q_size:]
        k, v = F.linear(x, weight).split([self.kv_size, self.kv_size], dim=-1)
        k = apply_rope(k.view(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        return k, v.view(b, t, self.num_kv_heads, self.head_dim)


class Rotary:
    """RoPE for [B, Q] position grids (the target's RotaryEmbedding takes [T]).

    A plain object, not a module: it holds no weights, so it adds nothing
    to a head's state dict.
    """

    def __init__(self, config: HeadConfig):
        self.rotary = RotaryEmbedding(config.layer_config())

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions [B, Q] -> cos, sin [B, Q, 1, hd]."""
        cos, sin = self.rotary(positions.reshape(-1), dtype)
        shape = (*positions.shape, 1, cos.shape[-1])
        return cos.view(shape), sin.view(shape)
