"""tools.attention_tiles: the plan before partition_by_chunks, swapped in
for a block of code only, and the two plans giving bitwise the same
attention from other tiles."""
from __future__ import annotations

import random

import torch

from kernels import invariant_attention
from tools import attention_tiles


def test_the_power_of_two_plan_cuts_where_the_bucket_changes():
    assert attention_tiles.power_of_two_partition([9, 8, 5, 4, 3, 2, 1, 1]) == [(0, 1), (1, 3), (3, 5), (5, 6), (6, 8)]
    assert attention_tiles.power_of_two_partition([]) == []


def test_a_plan_is_swapped_in_for_the_block_only():
    planned = invariant_attention.partition_by_chunks
    with attention_tiles.tiles_planned_by(attention_tiles.power_of_two_partition):
        assert invariant_attention.partition_by_chunks is attention_tiles.power_of_two_partition
    assert invariant_attention.partition_by_chunks is planned


def test_both_plans_give_the_same_attention_with_other_tiles(monkeypatch):
    monkeypatch.setattr(attention_tiles, "LAYERS", 1)
    gen = torch.Generator().manual_seed(1)
    shape = (attention_tiles.NUM_BLOCKS, attention_tiles.BLOCK_SIZE, attention_tiles.KV_HEADS, attention_tiles.HEAD_DIM)
    cache = (torch.randn(shape, generator=gen).to(torch.bfloat16), torch.randn(shape, generator=gen).to(torch.bfloat16))
    meta, query = attention_tiles.random_batch(random.Random(2), 16, 100, 600, (1,))
    before, tiles_before = attention_tiles.planned_forward(meta, query, cache, attention_tiles.power_of_two_partition)
    now, tiles_now = attention_tiles.planned_forward(meta, query, cache, invariant_attention.partition_by_chunks)
    assert torch.equal(before, now) and tiles_before != tiles_now
