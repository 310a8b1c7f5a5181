"""Batch-invariant paged attention as a Triton kernel (CUDA; the Triton
interpreter on CPU for tests).

Works at any cache block size (the default 16 included), unlike
flash-attn's paged path, which wants pages of a multiple of 256 tokens.
One program computes one query token under one KV head (its group of
query heads together): it walks the token's own cache blocks, 0 to
position // block_size, in that order, with an online softmax in float32.
Nothing in a program depends on the other tokens of the batch or on how
many there are, and the walk is the same whether the token is a decode
row, row j of a verification block or a prefill token: its result is
bitwise the same in any batch (the grid only says how many programs run).

Products are reduced with `tl.sum` over fixed-size tiles rather than
`tl.dot`: a dot needs tiles of at least 16 rows (a decode row has one
group of a few heads) and would run in TF32 on CUDA by default.
"""
import torch

try:  # optional: absent on CPU-only installs without triton
    import triton
    import triton.language as tl
    constexpr = tl.constexpr
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None
    constexpr = int  # the kernel below is then never run


def triton_available() -> bool:
    return triton is not None


def _paged_attention_program(Q, K, V, Out, BlockTables, TokenRequest, TokenPosition, scale,
                           stride_qt, stride_qh, stride_kb, stride_ks, stride_kh,
                           stride_vb, stride_vs, stride_vh, stride_ot, stride_oh, stride_bt,
                           GROUP: constexpr, GROUP_PAD: constexpr, HEAD_DIM: constexpr,
                           DIM_PAD: constexpr, BLOCK_SIZE: constexpr):
    """Program (token t, kv head h): the attention of query heads
    h*GROUP .. h*GROUP+GROUP-1 of token t over keys 0..position[t]."""
    token = tl.program_id(0)
    kv_head = tl.program_id(1)
    request = tl.load(TokenRequest + token).to(tl.int64)
    position = tl.load(TokenPosition + token)
    lanes = tl.arange(0, GROUP_PAD)
    dims = tl.arange(0, DIM_PAD)
    head_ok = lanes < GROUP
    dim_ok = dims < HEAD_DIM
    heads = kv_head * GROUP + lanes
    q = tl.load(Q + token * stride_qt + heads[:, None] * stride_qh + dims[None, :],
                mask=head_ok[:, None] & dim_ok[None, :], other=0.0).to(tl.float32) * scale
    best = tl.full([GROUP_PAD], float("-inf"), tl.float32)
    total = tl.zeros([GROUP_PAD], tl.float32)
    acc = tl.zeros([GROUP_PAD, DIM_PAD], tl.float32)
    slots = tl.arange(0, BLOCK_SIZE)
    for b in range(0, position // BLOCK_SIZE + 1):
        block = tl.load(BlockTables + request * stride_bt + b).to(tl.int64)
        visible = b * BLOCK_SIZE + slots <= position
        tile_ok = visible[:, None] & dim_ok[None, :]
        k = tl.load(K + block * stride_kb + slots[:, None] * stride_ks + kv_head * stride_kh + dims[None, :],
                    mask=tile_ok, other=0.0).to(tl.float32)
        scores = tl.sum(q[:, None, :] * k[None, :, :], axis=2)  # [GROUP_PAD, BLOCK_SIZE]
        scores = tl.where(visible[None, :], scores, float("-inf"))
        new_best = tl.maximum(best, tl.max(scores, axis=1))
        rescale = tl.exp(best - new_best)
        p = tl.exp(scores - new_best[:, None])
        total = total * rescale + tl.sum(p, axis=1)
        v = tl.load(V + block * stride_vb + slots[:, None] * stride_vs + kv_head * stride_vh + dims[None, :],
                    mask=tile_ok, other=0.0).to(tl.float32)
        acc = acc * rescale[:, None] + tl.sum(p[:, :, None] * v[None, :, :], axis=1)
        best = new_best
    out = acc / total[:, None]
    tl.store(Out + token * stride_ot + heads[:, None] * stride_oh + dims[None, :],
             out.to(Out.dtype.element_ty), mask=head_ok[:, None] & dim_ok[None, :])


# Triton's interpreter (TRITON_INTERPRET=1, read when triton is imported)
# runs the same program on CPU tensors; tests/conftest.py sets it on
# machines without CUDA.
# The block-table stride is the batch's longest table: not specialised on
# (Triton would compile again whenever its divisibility changed).
paged_attention_kernel = (triton.jit(_paged_attention_program, do_not_specialize=["stride_bt"])
                          if triton is not None else None)


def triton_paged_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    block_tables: torch.Tensor,  # [R, max_blocks] int32
    token_request: torch.Tensor,  # [T] int32: the request of each query token
    token_position: torch.Tensor,  # [T] int32: its position (it sees keys 0..position)
    scale: float,
) -> torch.Tensor:  # [T, H, D], query's dtype
    """Causal paged attention, one program per (token, KV head)."""
    if triton is None:
        raise RuntimeError("triton is not installed (pip install specserve[cuda])")
    tokens, num_heads, head_dim = query.shape
    _, block_size, num_kv_heads, _ = k_cache.shape
    _check_layout(query, k_cache, v_cache, block_size)
    group = num_heads // num_kv_heads
    out = torch.empty_like(query)
    if tokens == 0:
        return out
    if not query.is_cuda and not triton.knobs.runtime.interpret:
        raise RuntimeError("the Triton kernel runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1")
    paged_attention_kernel[(tokens, num_kv_heads)](
        query, k_cache, v_cache, out, block_tables, token_request, token_position, scale,
        query.stride(0), query.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), out.stride(0), out.stride(1),
        block_tables.stride(0),
        GROUP=group, GROUP_PAD=triton.next_power_of_2(group), HEAD_DIM=head_dim,
        DIM_PAD=triton.next_power_of_2(head_dim), BLOCK_SIZE=block_size)
    return out


def _check_layout(query, k_cache, v_cache, block_size: int) -> None:
    """The kernel indexes the last dimension with stride 1 and tiles blocks
    by a power of two; fail loudly on anything else."""
    if query.shape[1] % k_cache.shape[2]:
        raise ValueError(f"{query.shape[1]} query heads are not a multiple of {k_cache.shape[2]} KV heads")
    if block_size & (block_size - 1):
        raise ValueError(f"the Triton kernel needs a power-of-two block size, got {block_size}")
    for name, tensor in (("query", query), ("k_cache", k_cache), ("v_cache", v_cache)):
        if tensor.stride(-1) != 1:
            raise ValueError(f"{name} needs a contiguous last dimension")
