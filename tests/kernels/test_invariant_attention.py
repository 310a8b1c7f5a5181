"""kernels.invariant_attention: correct against the oracle, and each token's
output bitwise independent of the batch it is computed in."""
import random

import pytest
import torch

from kernels import invariant_attention
from kernels.attention import AttentionMetadata, paged_attention, reference_attention, write_kv
from kernels.invariant_attention import invariant_paged_attention, key_chunk_size
from tests.kernels.test_attention import BATCHES, random_batch

BLOCK_SIZE = 8
NUM_BLOCKS = 160
CONTEXTS = [300, 77, 5, 130, 64, 65, 1]  # across 64-key chunk boundaries


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (6, 1)])
def test_matches_reference(name, dtype, tol, heads):
    query, k_cache, v_cache, meta = random_batch(*BATCHES[name], *heads, 8, dtype)
    expected = reference_attention(query.double(), k_cache.double(), v_cache.double(), meta, 0.3)
    got = invariant_paged_attention(query, k_cache, v_cache, meta, 0.3)
    assert got.dtype == dtype  # computed in float32, returned in the query's dtype
    torch.testing.assert_close(got.double(), expected, atol=tol, rtol=tol)


def test_paged_attention_dispatches_on_the_flag():
    query, k_cache, v_cache, meta = random_batch(*BATCHES["mixed"], 4, 2, 8, torch.float32)
    got = paged_attention(query, k_cache, v_cache, meta, 0.3, batch_invariant=True)
    assert torch.equal(got, invariant_paged_attention(query, k_cache, v_cache, meta, 0.3))


def test_key_chunks_hold_whole_blocks_and_vector_pairs():
    assert key_chunk_size(16) == 64 and key_chunk_size(8) == 64
    assert key_chunk_size(256) == 256 and key_chunk_size(24) == 192


class Contexts:
    """Random caches for a few requests and every token's query."""

    def __init__(self, heads, dtype, seed=0):
        num_heads, num_kv_heads, head_dim = heads
        self.rng = random.Random(seed)
        gen = torch.Generator().manual_seed(seed)
        shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
        self.k = torch.randn(shape, generator=gen).to(dtype)
        self.v = torch.randn(shape, generator=gen).to(dtype)
        free = list(range(NUM_BLOCKS))
        self.rng.shuffle(free)
        self.tables = [[free.pop() for _ in range(-(-s // BLOCK_SIZE))] for s in CONTEXTS]
        self.queries = [torch.randn(s, num_heads, head_dim, generator=gen).to(dtype) for s in CONTEXTS]

    def run(self, spans):
        """spans: (request, query length, context length) -> outputs per span."""
        meta = AttentionMetadata.build([q for _, q, _ in spans], [s for _, _, s in spans],
                                       [self.tables[r] for r, _, _ in spans], BLOCK_SIZE, "cpu")
        query = torch.cat([self.queries[r][s - q:s] for r, q, s in spans])
        return invariant_paged_attention(query, self.k, self.v, meta, 0.125).split([q for _, q, _ in spans])

    def random_spans(self):
        spans = []
        for r in self.rng.sample(range(len(CONTEXTS)), self.rng.randint(1, len(CONTEXTS))):
            s = self.rng.randint(1, CONTEXTS[r])
            q = min(s, self.rng.choice([1, 1, 2, 5, 9, 16, 17, 40, 150, s]))
            spans.append((r, q, s))
        return spans


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("heads", [(9, 3, 64), (4, 4, 16), (4, 1, 32)])
def test_each_token_equals_itself_alone(dtype, heads):
    ctx = Contexts(heads, dtype)
    alone = {}
    for _ in range(25):
        spans = ctx.random_spans()
        for (r, q, s), out in zip(spans, ctx.run(spans)):
            for j in range(q):
                position = s - q + j
                if (r, position) not in alone:
                    alone[(r, position)] = ctx.run([(r, 1, position + 1)])[0][0]
                assert torch.equal(out[j], alone[(r, position)]), (spans, r, position)


def test_long_requests_are_tiled(monkeypatch):
    """Query tiles of a long request give the rows they would give untiled."""
    ctx = Contexts((4, 2, 16), torch.float32)
    whole = ctx.run([(0, 300, 300), (3, 3, 130)])
    monkeypatch.setattr(invariant_attention, "QUERY_TILE", 7)
    tiled = ctx.run([(0, 300, 300), (3, 3, 130)])
    assert all(torch.equal(a, b) for a, b in zip(whole, tiled))


def test_short_requests_share_tiles_per_query_length_bucket_grouped_by_context():
    """Decoding rows are not padded to a verifying request's length: a tile
    per query-length bucket (1, 2, 3-4, 5-8, 9-16), within it requests
    grouped by key chunks as `partition_by_chunks` cuts them, a prefill
    chunk in its own; a tile's GEMMs (rows x the group's heads) get at
    least MIN_GEMM_ROWS rows."""
    ctx = Contexts((4, 2, 16), torch.float32)
    spans = [(0, 1, 200), (1, 9, 70), (2, 1, 5), (3, 3, 130), (4, 4, 64), (5, 40, 65), (6, 1, 1)]
    meta = AttentionMetadata.build([q for _, q, _ in spans], [s for _, _, s in spans],
                                   [ctx.tables[r] for r, _, _ in spans], BLOCK_SIZE, "cpu")
    tiles = invariant_attention._build_tiles(meta, group=2, device="cpu")
    assert invariant_attention.MIN_GEMM_ROWS == 4  # one-row queries padded to two rows of two heads
    # 64-key chunks. One-token rows of 4, 1 and 1 chunks: the 4 alone (padding
    # the two 1s to 4 costs more than a tile), the 1s together. Rows of 3 and
    # 4 tokens over 3 and 1 chunks: together (2 chunks of padding < a tile).
    assert [(tile.groups, tile.rows, tile.hidden.shape[1]) for tile in tiles] == [
        (1, 2, 4), (2, 2, 1), (2, 4, 3), (1, 9, 2), (1, 40, 2)]
    # Each row as it is alone, whatever tile it landed in.
    for (r, q, s), out in zip(spans, ctx.run(spans)):
        assert torch.equal(out[-1], ctx.run([(r, 1, s)])[0][0])


def test_tiles_are_cut_where_padding_costs_more_than_a_tile():
    partition = invariant_attention.partition_by_chunks
    assert partition([3, 2], tile_cost=4) == [(0, 2)]  # 1 chunk of padding < a tile
    assert partition([8, 2], tile_cost=4) == [(0, 1), (1, 2)]  # 6 chunks of padding > a tile
    assert partition([40, 2, 2, 1], tile_cost=4, max_tile_chunks=48) == [(0, 1), (1, 4)]
    assert partition([100, 3], tile_cost=4, max_tile_chunks=48) == [(0, 1), (1, 2)]  # one request may exceed the cap
    even = partition([5] * 20, tile_cost=4, max_tile_chunks=48)
    assert len(even) == 3 and all(5 * (end - first) <= 48 for first, end in even)  # as few tiles as the cap allows
    assert [i for first, end in even for i in range(first, end)] == list(range(20))
    assert partition([]) == []
    with pytest.raises(ValueError, match="descending"):
        partition([1, 2])


def test_rejects_a_query_that_does_not_match_the_metadata():
    query, k_cache, v_cache, meta = random_batch(*BATCHES["decode"], 4, 2, 8, torch.float32)
    with pytest.raises(ValueError):
        invariant_paged_attention(query[:-1], k_cache, v_cache, meta, 0.3)


def test_writes_of_later_tokens_do_not_leak_into_earlier_rows():
    """A verification row must not see the drafts after it, though their keys
    sit in the same chunk: the mask, not the data, decides."""
    ctx = Contexts((4, 2, 16), torch.float32)
    before = ctx.run([(1, 6, 60)])[0]  # rows at positions 54..59
    meta = AttentionMetadata.build([5], [60], [ctx.tables[1]], BLOCK_SIZE, "cpu")
    junk = torch.full((5, 2, 16), 1e4)
    write_kv(ctx.k, ctx.v, junk, junk, meta.slot_mapping)  # overwrite positions 55..59
    after = ctx.run([(1, 1, 55)])[0]  # the row at position 54 does not see 55..59
    assert torch.equal(after[0], before[0])
