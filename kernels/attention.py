"""Attention over a paged KV cache for packed variable-length batches.

A step packs the new tokens of several requests into one flat batch of T
tokens. Request r contributes `query_lens[r]` tokens, which are the LAST
`query_lens[r]` positions of its `seq_lens[r]`-long context; its keys and
values live in fixed-size blocks of the cache named by `block_tables[r]`.

Two implementations share one contract:
- on CUDA, the Triton kernel of kernels/triton_paged_attention.py (any
  power-of-two block size, batch-invariant) when triton is installed;
  without `batch_invariant`, `flash_attn_varlen_func` with a block table
  first when flash-attn is installed and the cache geometry suits it
  (pages of a multiple of 256 tokens);
- a torch path everywhere else: short queries (decode, speculative
  verification) go through one padded, masked SDPA call; long prefills go
  one request at a time;
- with `batch_invariant=True` (and no flash-attn), the chunked path of
  kernels/invariant_attention.py, whose per-token result does not depend on
  the batch (SDPA's does).
`reference_attention` is the slow, obviously correct oracle for tests.
SPECSERVE_ATTENTION=torch forces the torch paths on CUDA (to compare or to
work around a kernel); =flash prefers flash-attn even in invariant mode.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kernels.invariant_attention import invariant_paged_attention
from kernels.to_device import to_device

# Requests with at most this many query tokens are batched in one padded
# SDPA call; longer ones (prefill chunks) run one by one, so the padding
# waste stays bounded by this many query rows per request.
SHORT_QUERY_MAX = 16

# flash-attn 2 pages must hold a multiple of 256 tokens.
FLASH_PAGE_MULTIPLE = 256

try:  # optional CUDA kernel; absence is normal on CPU installs
    from flash_attn import flash_attn_varlen_func  # type: ignore
except ImportError:  # pragma: no cover - depends on the install
    flash_attn_varlen_func = None


@dataclass
class AttentionMetadata:
    """Where each packed query token sits in its request's context and cache."""

    query_start_loc: torch.Tensor  # [R+1] int32, cumulative query lengths
    seq_lens: torch.Tensor  # [R] int32, context length incl. this step's queries
    block_tables: torch.Tensor  # [R, max_blocks] int32, padded with 0
    slot_mapping: torch.Tensor  # [T] int64, flat KV slot of each query token
    query_lens: list[int]
    seq_lens_list: list[int]
    max_query_len: int
    max_seq_len: int
    block_size: int
    # The block tables as host lists (planning reads them without a device sync).
    block_tables_list: list[list[int]] = field(default_factory=list)
    # "triton": always the Triton kernel (a captured CUDA graph, whose
    # metadata lives in static buffers that only that kernel reads).
    force_kernel: str | None = None
    # Derived tensors (masks, gather indices) built on first use and shared
    # by all layers of one forward.
    _plan_cache: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[int]],
        block_size: int,
        device,
    ) -> "AttentionMetadata":
        """Host lists -> metadata tensors on `device`."""
        _check_lengths(query_lens, seq_lens, block_tables, block_size)
        starts = [0]
        for q in query_lens:
            starts.append(starts[-1] + q)
        max_blocks = max((len(b) for b in block_tables), default=0)
        padded = [list(b) + [0] * (max_blocks - len(b)) for b in block_tables]
        slots = _slot_mapping(query_lens, seq_lens, block_tables, block_size)
        return cls(
            query_start_loc=to_device(starts, dtype=torch.int32, device=device),
            seq_lens=to_device(seq_lens, dtype=torch.int32, device=device),
            block_tables=to_device(padded, dtype=torch.int32, device=device).view(len(padded), max_blocks),
            slot_mapping=to_device(slots, dtype=torch.int64, device=device),
            query_lens=list(query_lens),
            seq_lens_list=list(seq_lens),
            max_query_len=max(query_lens, default=0),
            max_seq_len=max(seq_lens, default=0),
            block_size=block_size,
            block_tables_list=[list(b) for b in block_tables],
        )

    @property
    def num_tokens(self) -> int:
        return sum(self.query_lens)

    @property
    def num_requests(self) -> int:
        return len(self.query_lens)


def _check_lengths(query_lens, seq_lens, block_tables, block_size) -> None:
    if not len(query_lens) == len(seq_lens) == len(block_tables):
        raise ValueError("query_lens, seq_lens and block_tables need one entry per request")
    for q, s, blocks in zip(query_lens, seq_lens, block_tables):
        if not 0 < q <= s:
            raise ValueError(f"need 0 < query_len <= seq_len, got {q} and {s}")
        if len(blocks) * block_size < s:
            raise ValueError(f"{len(blocks)} blocks of {block_size} cannot hold {s} tokens")


def _slot_mapping(query_lens, seq_lens, block_tables, block_size) -> list[int]:
    slots: list[int] = []
    for q, s, blocks in zip(query_lens, seq_lens, block_tables):
        for pos in range(s - q, s):
            slots.append(blocks[pos // block_size] * block_size + pos % block_size)
    return slots


def write_kv(
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    key: torch.Tensor,  # [T, Hkv, D]
    value: torch.Tensor,  # [T, Hkv, D]
    slot_mapping: torch.Tensor,  # [T] int64
) -> None:
    """Store this step's keys and values at their flat cache slots."""
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, key.to(k_cache.dtype))
    v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slot_mapping, value.to(v_cache.dtype))


def paged_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    meta: AttentionMetadata,
    scale: float,
    batch_invariant: bool = False,
) -> torch.Tensor:  # [T, H, D]
    """Causal attention of each query token over its request's cached context.

    The keys and values of this step's tokens must already be in the cache
    (`write_kv`). Grouped-query attention: H must be a multiple of Hkv.
    """
    if meta.force_kernel == "triton":
        return _triton_attention(query, k_cache, v_cache, meta, scale)
    choice = os.environ.get("SPECSERVE_ATTENTION", "auto")
    flash = use_flash_attention(query, meta) and choice != "torch"
    if flash and (not batch_invariant or choice == "flash"):
        return _flash_paged_attention(query, k_cache, v_cache, meta, scale)
    if use_triton_attention(query, k_cache) and choice != "torch":
        return _triton_attention(query, k_cache, v_cache, meta, scale)
    if flash:
        return _flash_paged_attention(query, k_cache, v_cache, meta, scale)
    if batch_invariant:
        return invariant_paged_attention(query, k_cache, v_cache, meta, scale)
    return torch_paged_attention(query, k_cache, v_cache, meta, scale)


def use_flash_attention(query: torch.Tensor, meta: AttentionMetadata) -> bool:
    """flash-attn is chosen when installed and the inputs are in its domain."""
    return (
        flash_attn_varlen_func is not None
        and query.is_cuda
        and query.dtype in (torch.float16, torch.bfloat16)
        and meta.block_size % FLASH_PAGE_MULTIPLE == 0
    )


@functools.lru_cache(maxsize=1)
def _triton_kernels():
    """kernels.triton_paged_attention, imported on first use on CUDA (a CPU
    server never pays triton's import); None without triton."""
    from kernels import triton_paged_attention
    return triton_paged_attention if triton_paged_attention.triton_available() else None


def use_triton_attention(query: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """The Triton kernel is chosen on CUDA when triton is installed and the
    block size is a power of two."""
    return triton_attention_available(query.device, k_cache.shape[1])


def triton_attention_available(device, block_size: int) -> bool:
    """Whether the Triton kernel runs on `device` at this cache block size."""
    return (torch.device(device).type == "cuda" and block_size & (block_size - 1) == 0
            and _triton_kernels() is not None)


def token_layout(meta: "AttentionMetadata", device) -> tuple[torch.Tensor, torch.Tensor]:
    """[T] int32 request index and [T] int32 position of every packed query
    token (built from the host lists once per forward)."""
    key = ("token_layout", str(device))
    if key not in meta._plan_cache:
        requests, positions = [], []
        for r, (q_len, s_len) in enumerate(zip(meta.query_lens, meta.seq_lens_list)):
            requests.extend([r] * q_len)
            positions.extend(range(s_len - q_len, s_len))
        meta._plan_cache[key] = (to_device(requests, dtype=torch.int32, device=device),
                                 to_device(positions, dtype=torch.int32, device=device))
    return meta._plan_cache[key]


def _triton_attention(query, k_cache, v_cache, meta: "AttentionMetadata", scale: float) -> torch.Tensor:
    if meta.num_tokens != query.shape[0]:
        raise ValueError(f"metadata describes {meta.num_tokens} tokens, query has {query.shape[0]}")
    requests, positions = token_layout(meta, query.device)
    return _triton_kernels().triton_paged_attention(query, k_cache, v_cache, meta.block_tables,
                                                    requests, positions, scale)


def _flash_paged_attention(query, k_cache, v_cache, meta, scale) -> torch.Tensor:
    # No try/except: a failure here is a real bug and must surface.
    cu_seqlens_k = F.pad(torch.cumsum(meta.seq_lens, 0, dtype=torch.int32), (1, 0))
    return flash_attn_varlen_func(
        query,
        k_cache,
        v_cache,
        cu_seqlens_q=meta.query_start_loc,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=meta.max_query_len,
        max_seqlen_k=meta.max_seq_len,
        softmax_scale=scale,
        causal=True,  # flash-attn aligns the causal mask bottom-right
        block_table=meta.block_tables,
    )


def torch_paged_attention(query, k_cache, v_cache, meta: AttentionMetadata, scale: float) -> torch.Tensor:
    """The portable path: batched short queries plus a loop over long ones."""
    if meta.num_tokens != query.shape[0]:
        raise ValueError(f"metadata describes {meta.num_tokens} tokens, query has {query.shape[0]}")
    plan = _get_plan(meta, query.device)
    if plan.all_short and plan.max_short_query == 1:
        return _short_query_attention(query, k_cache, v_cache, plan, scale)  # pure decode
    out = torch.empty_like(query)
    if plan.short_requests:
        out[plan.short_token_index] = _short_query_attention(
            query[plan.short_token_index], k_cache, v_cache, plan, scale
        )
    for r in plan.long_requests:
        start = plan.starts[r]
        q_len, s_len = meta.query_lens[r], meta.seq_lens_list[r]
        out[start : start + q_len] = _one_request_attention(
            query[start : start + q_len], k_cache, v_cache, meta.block_tables[r], s_len, scale
        )
    return out


@dataclass
class _Plan:
    """Per-forward indices and masks for the torch path (shared by layers)."""

    starts: list[int]
    short_requests: list[int]
    long_requests: list[int]
    all_short: bool
    max_short_query: int
    short_token_index: torch.Tensor | None  # [Ts] rows of the packed batch
    pad_index: torch.Tensor | None  # [Ts] rows of the padded [G*Qmax] query
    block_tables: torch.Tensor | None  # [G, nblk] blocks covering the group
    mask: torch.Tensor | None  # [G, 1, Qmax, L] bool, True = may attend


def _get_plan(meta: AttentionMetadata, device) -> _Plan:
    key = ("torch_plan", str(device))
    if key not in meta._plan_cache:
        meta._plan_cache[key] = _build_plan(meta, device)
    return meta._plan_cache[key]


def _build_plan(meta: AttentionMetadata, device) -> _Plan:
    starts = [0]
    for q in meta.query_lens:
        starts.append(starts[-1] + q)
    short = [r for r, q in enumerate(meta.query_lens) if q <= SHORT_QUERY_MAX]
    long = [r for r, q in enumerate(meta.query_lens) if q > SHORT_QUERY_MAX]
    plan = _Plan(starts, short, long, not long, 0, None, None, None, None)
    if short:
        _add_short_group(plan, meta, device)
    return plan


def _add_short_group(plan: _Plan, meta: AttentionMetadata, device) -> None:
    """Index and mask tensors for one padded call over the short requests."""
    q_lens = [meta.query_lens[r] for r in plan.short_requests]
    s_lens = [meta.seq_lens_list[r] for r in plan.short_requests]
    q_max, s_max = max(q_lens), max(s_lens)
    num_blocks = -(-s_max // meta.block_size)
    token_rows, pad_rows = [], []
    for g, r in enumerate(plan.short_requests):
        for j in range(meta.query_lens[r]):
            token_rows.append(plan.starts[r] + j)
            pad_rows.append(g * q_max + j)
    plan.max_short_query = q_max
    plan.short_token_index = to_device(token_rows, dtype=torch.long, device=device)
    plan.pad_index = to_device(pad_rows, dtype=torch.long, device=device)
    rows = to_device(plan.short_requests, dtype=torch.long, device=device)
    plan.block_tables = meta.block_tables.to(device)[rows, :num_blocks].long()
    plan.mask = _padded_causal_mask(q_lens, s_lens, q_max, num_blocks * meta.block_size, device)


def _padded_causal_mask(q_lens, s_lens, q_max, key_len, device) -> torch.Tensor:
    """[G, 1, Qmax, L] bool: query j of request g sees keys 0..s-q+j.

    Padding query rows copy the last real row so no row is fully masked
    (an all-False row would make softmax NaN); their output is dropped.
    """
    q = to_device(q_lens, device=device).view(-1, 1)
    s = to_device(s_lens, device=device).view(-1, 1)
    j = torch.arange(q_max, device=device).view(1, -1).minimum(q - 1)
    last_visible = s - q + j  # [G, Qmax]
    keys = torch.arange(key_len, device=device).view(1, 1, -1)
    return (keys <= last_visible.unsqueeze(-1)).unsqueeze(1)


def _short_query_attention(query, k_cache, v_cache, plan: _Plan, scale: float) -> torch.Tensor:
    """One SDPA call over requests with few query tokens, padded to Qmax."""
    groups, q_max = plan.block_tables.shape[0], plan.max_short_query
    num_heads, head_dim = query.shape[1], query.shape[2]
    if q_max == 1 and query.shape[0] == groups:
        padded = query.unsqueeze(1)  # [G, 1, H, D], no scatter needed
    else:
        padded = query.new_zeros(groups * q_max, num_heads, head_dim)
        padded[plan.pad_index] = query
        padded = padded.view(groups, q_max, num_heads, head_dim)
    keys = _gather_blocks(k_cache, plan.block_tables)  # [G, L, Hkv, D]
    values = _gather_blocks(v_cache, plan.block_tables)
    out = _sdpa(padded.transpose(1, 2), keys.transpose(1, 2), values.transpose(1, 2), plan.mask, scale)
    out = out.transpose(1, 2).reshape(groups * q_max, num_heads, head_dim)  # [G*Qmax, H, D]
    return out if q_max == 1 and query.shape[0] == groups else out[plan.pad_index]


def _gather_blocks(cache: torch.Tensor, block_tables: torch.Tensor) -> torch.Tensor:
    """[num_blocks, bs, Hkv, D] x [G, nblk] -> [G, nblk*bs, Hkv, D]."""
    g, nblk = block_tables.shape
    _, bs, hkv, d = cache.shape
    # index_select copies whole blocks; measured ~1.5x faster than cache[block_tables].
    return cache.index_select(0, block_tables.reshape(-1)).view(g, nblk * bs, hkv, d)


def _one_request_attention(query, k_cache, v_cache, block_table, seq_len: int, scale: float) -> torch.Tensor:
    """query [q, H, D] over the first seq_len cached tokens -> [q, H, D]."""
    q_len, block_size = query.shape[0], k_cache.shape[1]
    num_blocks = -(-seq_len // block_size)
    blocks = block_table[:num_blocks].to(query.device).long()
    keys = _gather_blocks(k_cache, blocks.unsqueeze(0))[0, :seq_len]  # [s, Hkv, D]
    values = _gather_blocks(v_cache, blocks.unsqueeze(0))[0, :seq_len]
    mask = None
    if q_len != seq_len:  # queries are the last q positions: bottom-right causal
        first_visible = torch.arange(seq_len - q_len, seq_len, device=query.device).view(-1, 1)
        mask = torch.arange(seq_len, device=query.device).view(1, -1) <= first_visible
    q, k, v = query.transpose(0, 1), keys.transpose(0, 1), values.transpose(0, 1)  # heads first
    return _sdpa(q, k, v, mask, scale, causal=mask is None).transpose(0, 1)


def _sdpa(q, k, v, mask, scale: float, causal: bool = False) -> torch.Tensor:
    """SDPA with grouped-query heads: q [..., H, q, D], k/v [..., Hkv, L, D]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)


def reference_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, H, D]
    """Token-by-token softmax attention, the test oracle for paged_attention."""
    num_heads, num_kv_heads = query.shape[1], k_cache.shape[2]
    group = num_heads // num_kv_heads
    block_size = meta.block_size
    out = torch.empty_like(query)
    t = 0
    for r, (q_len, s_len) in enumerate(zip(meta.query_lens, meta.seq_lens_list)):
        table = meta.block_tables[r].tolist()
        slots = [table[p // block_size] * block_size + p % block_size for p in range(s_len)]
        keys = k_cache.reshape(-1, num_kv_heads, k_cache.shape[3])[slots].repeat_interleave(group, dim=1)
        values = v_cache.reshape(-1, num_kv_heads, v_cache.shape[3])[slots].repeat_interleave(group, dim=1)
        for i in range(q_len):
            visible = s_len - q_len + i + 1  # own position included
            scores = torch.einsum("hd,khd->hk", query[t], keys[:visible]) * scale
            out[t] = torch.einsum("hk,khd->hd", scores.softmax(dim=-1), values[:visible])
            t += 1
    return out
