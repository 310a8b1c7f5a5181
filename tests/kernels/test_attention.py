"""paged_attention (torch path, and flash-attn when present) against the oracle."""
import random

import pytest
import torch

from kernels import attention
from kernels.attention import AttentionMetadata, paged_attention, reference_attention, write_kv

BLOCK_SIZE = 4
NUM_BLOCKS = 64


def random_batch(query_lens, seq_lens, num_heads, num_kv_heads, head_dim, dtype, seed=0):
    """Random caches filled through write_kv, random disjoint block tables."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    free = list(range(1, NUM_BLOCKS))
    rng.shuffle(free)
    tables = [[free.pop() for _ in range(-(-s // BLOCK_SIZE))] for s in seq_lens]
    shape = (NUM_BLOCKS, BLOCK_SIZE, num_kv_heads, head_dim)
    k_cache = torch.randn(shape, generator=gen, dtype=dtype)
    v_cache = torch.randn(shape, generator=gen, dtype=dtype)
    # The context before this step's queries: written as one "previous step".
    history = AttentionMetadata.build(seq_lens, seq_lens, tables, BLOCK_SIZE, "cpu")
    total = sum(seq_lens)
    write_kv(
        k_cache,
        v_cache,
        torch.randn(total, num_kv_heads, head_dim, generator=gen, dtype=dtype),
        torch.randn(total, num_kv_heads, head_dim, generator=gen, dtype=dtype),
        history.slot_mapping,
    )
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, BLOCK_SIZE, "cpu")
    query = torch.randn(sum(query_lens), num_heads, head_dim, generator=gen, dtype=dtype)
    return query, k_cache, v_cache, meta


BATCHES = {
    "decode": ([1, 1, 1, 1], [5, 1, 17, 9]),
    "prefill": ([7, 3, 12], [7, 3, 12]),
    "chunked_prefill": ([5, 20], [9, 33]),
    "mixed": ([1, 6, 1, 19, 3, 1], [13, 6, 4, 40, 10, 1]),
    "verify": ([4, 5, 2], [21, 8, 2]),
}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
@pytest.mark.parametrize("name", sorted(BATCHES))
@pytest.mark.parametrize("heads", [(4, 2), (4, 4), (6, 1)])
def test_paged_attention_matches_reference(name, dtype, tol, heads):
    query_lens, seq_lens = BATCHES[name]
    query, k_cache, v_cache, meta = random_batch(query_lens, seq_lens, *heads, 8, dtype)
    expected = reference_attention(query, k_cache, v_cache, meta, 0.3)
    got = paged_attention(query, k_cache, v_cache, meta, 0.3)
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)
    # The per-layer plan is cached: a second call reuses it and agrees.
    torch.testing.assert_close(paged_attention(query, k_cache, v_cache, meta, 0.3), got)


def test_long_and_short_paths_agree(monkeypatch):
    """Forcing every request through the per-request loop gives the same result."""
    query, k_cache, v_cache, meta = random_batch(*BATCHES["mixed"], 4, 2, 8, torch.float64)
    batched = paged_attention(query, k_cache, v_cache, meta, 0.5)
    monkeypatch.setattr(attention, "SHORT_QUERY_MAX", 0)
    meta._plan_cache.clear()
    looped = paged_attention(query, k_cache, v_cache, meta, 0.5)
    torch.testing.assert_close(looped, batched, atol=1e-12, rtol=1e-12)


def test_build_slot_mapping_and_padding():
    meta = AttentionMetadata.build([2, 1], [6, 3], [[5, 2], [7]], 4, "cpu")
    # request 0: positions 4, 5 in block 2; request 1: position 2 in block 7
    assert meta.slot_mapping.tolist() == [2 * 4 + 0, 2 * 4 + 1, 7 * 4 + 2]
    assert meta.block_tables.tolist() == [[5, 2], [7, 0]]
    assert meta.query_start_loc.tolist() == [0, 2, 3]
    assert (meta.max_query_len, meta.max_seq_len) == (2, 6)


def test_build_rejects_too_few_blocks():
    with pytest.raises(ValueError):
        AttentionMetadata.build([1], [9], [[0, 1]], 4, "cpu")


def test_write_kv_places_tokens():
    k_cache = torch.zeros(4, 2, 1, 3)
    v_cache = torch.zeros(4, 2, 1, 3)
    key = torch.arange(6.0).view(2, 1, 3)
    write_kv(k_cache, v_cache, key, -key, torch.tensor([5, 0]))
    assert k_cache[2, 1, 0].tolist() == [0.0, 1.0, 2.0]
    assert v_cache[0, 0, 0].tolist() == [-3.0, -4.0, -5.0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_matches_reference(dtype):
    """On a GPU: the chosen path (flash-attn if eligible, torch otherwise)."""
    query, k_cache, v_cache, meta = random_batch(*BATCHES["mixed"], 4, 2, 64, torch.float32)
    expected = reference_attention(query, k_cache, v_cache, meta, 0.125)
    cuda_meta = AttentionMetadata.build(meta.query_lens, meta.seq_lens_list, meta.block_tables.tolist(), BLOCK_SIZE, "cuda")
    got = paged_attention(query.cuda().to(dtype), k_cache.cuda().to(dtype), v_cache.cuda().to(dtype), cuda_meta, 0.125)
    torch.testing.assert_close(got.float().cpu(), expected, atol=2e-2, rtol=2e-2)


def test_flash_path_arguments_and_errors_surface(monkeypatch):
    """When the flash path is chosen, it gets cumulative key lengths and the
    block table, and its errors propagate (no silent torch fallback)."""
    query, k_cache, v_cache, meta = random_batch(*BATCHES["mixed"], 4, 2, 8, torch.float32)
    seen = {}

    def fake_flash(q, k, v, **kwargs):
        seen.update(kwargs)
        return torch.full_like(q, 7.0)

    monkeypatch.setattr(attention, "use_flash_attention", lambda query, meta: True)
    monkeypatch.setattr(attention, "flash_attn_varlen_func", fake_flash)
    out = paged_attention(query, k_cache, v_cache, meta, 0.5)
    assert (out == 7.0).all()
    assert seen["cu_seqlens_k"].tolist() == [0, 13, 19, 23, 63, 73, 74]
    assert seen["block_table"] is meta.block_tables and seen["causal"] and seen["softmax_scale"] == 0.5

    def broken_flash(*args, **kwargs):
        raise RuntimeError("kernel failed")

    monkeypatch.setattr(attention, "flash_attn_varlen_func", broken_flash)
    with pytest.raises(RuntimeError, match="kernel failed"):
        paged_attention(query, k_cache, v_cache, meta, 0.5)


def test_flash_eligibility_on_cpu():
    query, _, _, meta = random_batch(*BATCHES["decode"], 4, 2, 8, torch.float32)
    assert not attention.use_flash_attention(query, meta)  # CPU tensors always take the torch path
