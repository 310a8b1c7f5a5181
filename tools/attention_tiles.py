"""How the batch-invariant CPU attention tiles a batch of short requests,
timed side by side: the plan in kernels.invariant_attention
(`partition_by_chunks`: requests grouped by context length at the least
cost of tiles plus padded chunks) against the one before it (a tile per
power-of-two bucket of key chunks) and other costs and caps. Every plan
must give bitwise the same outputs (a tile never changes a row's
reductions); the tool checks that before it times anything.

    OMP_NUM_THREADS=1 python -m tools.attention_tiles --reps 5

Per batch (requests x context range x query rows, SmolLM2's 9 query and 3
kv heads of 64, bfloat16 cache, 30 layers' calls), each plan's time over
the power-of-two plan's, plans interleaved in rotating order. A
diagnostic: the engine-level figure is tools.engine_ab's `off` against
`off-pow2-tiles` in lockstep.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time
from contextlib import contextmanager
from functools import partial

import torch

from bench.spec_sweep import rotated
from kernels import invariant_attention
from kernels.attention import AttentionMetadata

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE, NUM_BLOCKS, LAYERS = 9, 3, 64, 16, 2400, 30
BATCHES = [(n, lo, hi, rows) for n in (2, 8, 32) for lo, hi in ((20, 200), (100, 500), (300, 900))
           for rows in ((1,), (1, 2, 4, 8))]


def power_of_two_partition(chunk_counts: list[int]) -> list[tuple[int, int]]:
    """The plan before `partition_by_chunks`: one tile per power-of-two
    bucket of key chunks (1, 2, 3-4, 5-8, ...), of counts in descending order."""
    bucket = invariant_attention._power_of_two_bucket
    tiles, first = [], 0
    for i in range(1, len(chunk_counts) + 1):
        if i == len(chunk_counts) or bucket(chunk_counts[i]) != bucket(chunk_counts[first]):
            tiles.append((first, i))
            first = i
    return tiles


@contextmanager
def tiles_planned_by(partition):
    """Plan shared tiles with `partition` instead of partition_by_chunks."""
    planned = invariant_attention.partition_by_chunks
    invariant_attention.partition_by_chunks = partition
    try:
        yield
    finally:
        invariant_attention.partition_by_chunks = planned


def random_batch(rng: random.Random, n: int, lo: int, hi: int, rows: tuple[int, ...]):
    """Metadata and queries of n requests with contexts in [lo, hi), each
    verifying one of `rows` query tokens, their blocks scattered."""
    query_lens = [rng.choice(rows) for _ in range(n)]
    contexts = [max(rng.randrange(lo, hi), q) for q in query_lens]
    free = list(range(1, NUM_BLOCKS))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-s // BLOCK_SIZE))] for s in contexts]
    meta = AttentionMetadata.build(query_lens, contexts, tables, BLOCK_SIZE, "cpu")
    return meta, torch.randn(sum(query_lens), HEADS, HEAD_DIM).to(torch.bfloat16)


def planned_forward(meta, query, cache, partition):
    """One forward's attention calls (LAYERS of them) under `partition`'s
    plan, planned afresh by the first as in an engine forward; the output
    and the plan's tile count."""
    meta._plan_cache.clear()
    with tiles_planned_by(partition):
        for _ in range(LAYERS):
            out = invariant_attention.invariant_paged_attention(query, *cache, meta, 1 / HEAD_DIM ** 0.5)
    return out, len(invariant_attention._get_tiles(meta, HEADS // KV_HEADS, "cpu"))


def plans(costs: list[int], caps: list[int]) -> dict:
    named = {"pow2": power_of_two_partition}
    for cost in costs:
        for cap in caps:
            named[f"cost{cost}/cap{cap}"] = partial(invariant_attention.partition_by_chunks,
                                                    tile_cost=cost, max_tile_chunks=cap)
    return named


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed forwards per plan and batch")
    parser.add_argument("--costs", default=f"2,{invariant_attention.TILE_COST_CHUNKS},8")
    parser.add_argument("--caps", default=f"24,{invariant_attention.MAX_TILE_CHUNKS},96,100000")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    shape = (NUM_BLOCKS, BLOCK_SIZE, KV_HEADS, HEAD_DIM)
    cache = (torch.randn(shape, generator=gen).to(torch.bfloat16), torch.randn(shape, generator=gen).to(torch.bfloat16))
    named = plans([int(c) for c in args.costs.split(",")], [int(c) for c in args.caps.split(",")])
    ratios = {name: [] for name in named}
    for n, lo, hi, rows in BATCHES:
        meta, query = random_batch(rng, n, lo, hi, rows)
        reference, _ = planned_forward(meta, query, cache, power_of_two_partition)
        seconds, tiles = dict.fromkeys(named, 0.0), {}
        for name, partition in named.items():
            out, tiles[name] = planned_forward(meta, query, cache, partition)
            if not torch.equal(out, reference):
                raise SystemExit(f"plan {name} changed the outputs: tiling must never change a row")
        for rep in range(args.reps):
            for name in rotated(list(named), rep):
                started = time.perf_counter()
                planned_forward(meta, query, cache, named[name])
                seconds[name] += time.perf_counter() - started
        base = seconds["pow2"]
        for name in named:
            ratios[name].append(seconds[name] / base)
        print(f"{n:3d} requests, contexts {lo}-{hi}, query rows {rows}: pow2 {base / args.reps * 1e3:.1f} ms "
              f"({tiles['pow2']} tiles); " + " ".join(f"{name} {seconds[name] / base:.2f} ({tiles[name]})"
                                                       for name in named if name != "pow2"), flush=True)
    print("geometric mean over batches, time / pow2's:")
    for name, values in ratios.items():
        print(f"  {name}: {statistics.geometric_mean(values):.3f} (worst {max(values):.2f})")


if __name__ == "__main__":
    main()
