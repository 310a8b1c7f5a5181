"""The physical paged KV cache: one (key, value) tensor pair per layer, and
the target features beside it for drafters that read them.

Block ids handed out by the scheduler's block manager index the first
dimension; the block manager owns the bookkeeping, this module only the
memory.
"""
from __future__ import annotations

import torch

from engine.config import ModelConfig


def allocate_kv_caches(
    config: ModelConfig,
    num_blocks: int,
    block_size: int,
    dtype: torch.dtype,
    device,
    num_layers: int | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (k, v), each [num_blocks, block_size, num_kv_heads, head_dim].

    `num_layers` allocates for only the first n layers (a self-draft model
    that runs a prefix of the target's layers).
    """
    layers = config.num_layers if num_layers is None else num_layers
    if not 0 < layers <= config.num_layers:
        raise ValueError(f"num_layers must be in [1, {config.num_layers}], got {layers}")
    if num_blocks <= 0 or block_size <= 0:
        raise ValueError("num_blocks and block_size must be positive")
    shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
    # zeros, not empty: padding slots are read (and masked) by batched
    # attention, and NaN garbage times a zero weight would still be NaN.
    return [
        (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
        for _ in range(layers)
    ]


def kv_bytes_per_token(config: ModelConfig, dtype: torch.dtype) -> int:
    """Bytes of K and V that one token occupies across all layers."""
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_layers * config.num_kv_heads * config.head_dim * element


def allocate_feature_cache(model_config: ModelConfig, aux_layers: tuple[int, ...], num_blocks: int, block_size: int,
                           dtype: torch.dtype, device) -> torch.Tensor | None:
    """[num_blocks * block_size, len(aux_layers) * hidden] beside the KV cache
    (None without aux layers). Written with every token's KV, so the blocks
    the prefix cache shares carry their tokens' features: a head drafter,
    which needs every token's features, keeps prefix caching.
    Costs len(aux_layers) * hidden values per token (SmolLM2: 1,728, about
    15% of its KV)."""
    if not aux_layers:
        return None
    return torch.zeros(num_blocks * block_size, len(aux_layers) * model_config.hidden_size,
                       dtype=dtype, device=device)
