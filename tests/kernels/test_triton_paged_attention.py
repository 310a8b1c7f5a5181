"""The Triton paged-attention kernel: correct against the reference oracle,
and batch-invariant (a token's output is bitwise the same alone, as row j
of a verification block, or beside other requests), at block size 16.

On CPU it runs in Triton's interpreter (tests/conftest.py sets
TRITON_INTERPRET=1), float32 and float16 only (the interpreter's bfloat16
is broken); tests/gpu/gpu_check.py (tools/gpu_check.sh) reruns this file compiled on CUDA, with
bfloat16. Kept small: the interpreter is slow.
"""
from __future__ import annotations

import random

import pytest
import torch

from kernels.attention import AttentionMetadata, _triton_attention, reference_attention

triton = pytest.importorskip("triton", reason="triton is not installed (the `cuda` extra)")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu" and not triton.knobs.runtime.interpret:
    pytest.skip("no CUDA, and triton was imported without TRITON_INTERPRET=1", allow_module_level=True)

BLOCK_SIZE = 16
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
TOLERANCE = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_cache(num_heads, num_kv_heads, head_dim, dtype, num_blocks=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shape = (num_blocks, BLOCK_SIZE, num_kv_heads, head_dim)
    k, v = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    return k.to(DEVICE, dtype), v.to(DEVICE, dtype)


def random_tables(seq_lens, num_blocks, rng):
    """Disjoint, shuffled block tables (block 0 left unused, like padding)."""
    free = list(range(1, num_blocks))
    rng.shuffle(free)
    tables = []
    for s in seq_lens:
        need = -(-s // BLOCK_SIZE)
        tables.append(free[:need])
        free = free[need:]
    return tables


def run(query, k, v, q_lens, s_lens, tables, scale=0.3):
    meta = AttentionMetadata.build(q_lens, s_lens, tables, BLOCK_SIZE, DEVICE)
    return _triton_attention(query, k, v, meta, scale), meta


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 2, 16), (6, 2, 8)])  # a power-of-two group and a padded one
def test_matches_the_reference(dtype, heads):
    num_heads, num_kv_heads, head_dim = heads
    k, v = make_cache(num_heads, num_kv_heads, head_dim, dtype)
    q_lens, s_lens = [1, 4, 17, 2], [33, 4, 40, 16]  # decode, fresh prefill, long prefill, verify
    tables = random_tables(s_lens, 24, random.Random(1))
    query = torch.randn(sum(q_lens), num_heads, head_dim, generator=torch.Generator().manual_seed(2)).to(DEVICE, dtype)
    out, meta = run(query, k, v, q_lens, s_lens, tables)
    expected = reference_attention(query.float(), k.float(), v.float(), meta, 0.3)
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), expected, atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_token_is_bitwise_the_same_in_any_batch(dtype):
    """Each request's tokens alone, then every token as a decode row alone,
    against one packed batch (in two orders) with the other requests."""
    num_heads, num_kv_heads, head_dim = 4, 2, 16
    k, v = make_cache(num_heads, num_kv_heads, head_dim, dtype, seed=3)
    q_lens, s_lens = [1, 5, 3, 9], [18, 37, 3, 41]
    tables = random_tables(s_lens, 24, random.Random(4))
    queries = [torch.randn(q, num_heads, head_dim, generator=torch.Generator().manual_seed(10 + i)).to(DEVICE, dtype)
               for i, q in enumerate(q_lens)]
    packed, _ = run(torch.cat(queries), k, v, q_lens, s_lens, tables)
    order = [2, 0, 3, 1]
    shuffled, _ = run(torch.cat([queries[r] for r in order]), k, v, [q_lens[r] for r in order],
                      [s_lens[r] for r in order], [tables[r] for r in order])
    starts = [sum(q_lens[:r]) for r in range(len(q_lens))]
    shuffled_starts = {r: sum(q_lens[o] for o in order[:i]) for i, r in enumerate(order)}
    for r, (q, s) in enumerate(zip(q_lens, s_lens)):
        alone, _ = run(queries[r], k, v, [q], [s], [tables[r]])
        assert torch.equal(alone, packed[starts[r]: starts[r] + q])
        assert torch.equal(alone, shuffled[shuffled_starts[r]: shuffled_starts[r] + q])
        for j in range(q):  # row j of the block == that token decoded on its own
            position = s - q + j
            decoded, _ = run(queries[r][j: j + 1], k, v, [1], [position + 1], [tables[r]])
            assert torch.equal(decoded[0], alone[j])
