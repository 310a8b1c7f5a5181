"""Batch-invariant attention over the paged KV cache (plain torch ops).

A query token's output must be bitwise the same whether it is decoded
alone, verified as one row of a draft block, or computed in a packed batch
beside other requests. SDPA's CPU kernel cannot promise that: it picks its
split sizes from the lengths in the batch, and its vector loops end in
scalar tails whose position moves with the length. Here every reduction a
row takes part in has a shape fixed by the row's own context:

- keys are cut into chunks of `key_chunk_size` positions at absolute
  offsets (chunk c = positions [c*C, (c+1)*C)), whatever the batch;
- scores against one chunk are a GEMM whose reduction runs over head_dim;
  the per-chunk sums (row sums of exp, probabilities times values) run over
  exactly C keys, with keys past the row's position at weight exactly 0;
- chunks are combined in chunk order by a sequential scan (`cumsum`), so
  chunks a row does not reach (padding up to the batch's longest context)
  add exact zeros; the softmax max is exact in any order;
- all math is in float32, and C is a multiple of 64 floats so elementwise
  kernels never fall into their scalar tail (vector and scalar `exp` may
  differ in the last bit);
- no GEMM runs with fewer than MIN_GEMM_ROWS rows (the fewest rows take
  other kernels that sum in another order): shorter queries are padded.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from kernels.linear import SMALL_GEMM_ROWS
from kernels.to_device import to_device

if TYPE_CHECKING:  # kernels.attention imports this module
    from kernels.attention import AttentionMetadata

# Keys per chunk is a multiple of this; 64 floats are whole AVX-512 vector pairs.
CHUNK_MULTIPLE = 64
# Rows of a long request (prefill chunk) per call; bounds the score tensor.
QUERY_TILE = 128
# Requests with at most this many query tokens (decode, verification) share
# padded tiles; longer ones (prefill chunks) get tiles of their own.
SHARED_TILE_MAX_QUERY = 16
# Score and value GEMMs get at least this many rows (kernels.linear).
MIN_GEMM_ROWS = SMALL_GEMM_ROWS
# Short requests share tiles planned by `partition_by_chunks`: a tile's fixed
# cost (a dozen kernel calls per layer, whatever its size) in request-chunks
# of work, and the most request-chunks one tile holds (each gathers 96 KiB
# of float32 keys and values at SmolLM2's 3 x 64 kv dims; larger tiles
# spill out of the cache between their kernels and cost more per chunk).
# Chosen with tools.attention_tiles (docs/draft-heads.md, "Phase 13").
TILE_COST_CHUNKS = 4
MAX_TILE_CHUNKS = 48


def key_chunk_size(block_size: int) -> int:
    """Chunks hold whole cache blocks and whole vector pairs."""
    return block_size * CHUNK_MULTIPLE // math.gcd(block_size, CHUNK_MULTIPLE)


@dataclass
class _Tile:
    """Query rows of some requests, padded to [G, Qm], with their key blocks."""

    token_index: torch.Tensor  # [n] rows of the packed batch computed here
    pad_index: torch.Tensor | None  # [n] their rows in the padded [G*Qm]; None: identity
    groups: int  # G
    rows: int  # Qm
    block_ids: torch.Tensor  # [G*NC*C/bs] long: each request's chunks, padded with block 0
    hidden: torch.Tensor  # [G, NC, Qm*g, C] bool: key position > row position


def invariant_paged_attention(
    query: torch.Tensor,  # [T, H, D]
    k_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    v_cache: torch.Tensor,  # [num_blocks, block_size, Hkv, D]
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:  # [T, H, D], query's dtype
    """Causal attention of each query token over its request's cached context,
    with a reduction order that depends only on the token's own position."""
    if meta.num_tokens != query.shape[0]:
        raise ValueError(f"metadata describes {meta.num_tokens} tokens, query has {query.shape[0]}")
    group = query.shape[1] // k_cache.shape[2]
    tiles = _get_tiles(meta, group, query.device)
    if len(tiles) == 1 and tiles[0].pad_index is None:
        return _tile_attention(query, k_cache, v_cache, tiles[0], scale)
    out = torch.empty_like(query)
    for tile in tiles:
        out[tile.token_index] = _tile_attention(query[tile.token_index], k_cache, v_cache, tile, scale)
    return out


def _tile_attention(query, k_cache, v_cache, tile: _Tile, scale: float) -> torch.Tensor:
    """query [n, H, D] (the tile's rows) -> [n, H, D]."""
    num_heads, head_dim = query.shape[1], query.shape[2]
    q = query.float()
    if tile.pad_index is not None:
        padded = q.new_zeros(tile.groups * tile.rows, num_heads, head_dim)
        padded[tile.pad_index] = q
        q = padded
    chunk = tile.hidden.shape[-1]
    keys = _gather_chunks(k_cache, tile.block_ids, chunk)  # [G*NC, C, Hkv, D] float32
    values = _gather_chunks(v_cache, tile.block_ids, chunk)
    out = chunked_softmax_attention(q.view(tile.groups, tile.rows, num_heads, head_dim), keys, values,
                                    tile.hidden, scale, query.dtype)
    out = out.view(tile.groups * tile.rows, num_heads, head_dim)
    return out if tile.pad_index is None else out[tile.pad_index]


def chunked_softmax_attention(
    q: torch.Tensor,  # [G, Qm, H, D] float32
    keys: torch.Tensor,  # [G*NC, C, Hkv, D] float32, request-major
    values: torch.Tensor,  # [G*NC, C, Hkv, D] float32
    hidden: torch.Tensor,  # [G, NC, Qm*g, C] bool, True: masked
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:  # [G, Qm, H, D] in out_dtype
    """Softmax attention with keys in fixed chunks combined in chunk order."""
    groups, rows, num_heads, head_dim = q.shape
    batch, chunk, num_kv_heads = keys.shape[:3]  # one GEMM per (request, key chunk)
    num_chunks, g = batch // groups, num_heads // num_kv_heads
    # Row r*g + i under kv head h is query row r, head h*g + i; every chunk of
    # a request sees the same query rows (broadcast in this one copy).
    shape = (num_kv_heads, groups, num_chunks, rows, g, head_dim)
    qx = q.new_empty(shape)
    torch.mul(q.view(groups, 1, rows, num_kv_heads, g, head_dim).permute(3, 0, 1, 2, 4, 5).expand(shape),
              scale, out=qx)
    qx = qx.view(num_kv_heads, batch, rows * g, head_dim)
    scores = q.new_empty(num_kv_heads, batch, rows * g, chunk)
    for h in range(num_kv_heads):  # per kv head: its cache slice is a plain strided matrix
        torch.bmm(qx[h], keys[:, :, h].transpose(1, 2), out=scores[h])
    scores = scores.view(num_kv_heads, groups, num_chunks, rows * g, chunk).masked_fill_(hidden, float("-inf"))
    probs = scores.sub_(scores.amax(dim=(2, 4), keepdim=True)).exp_()  # the max is exact in any order
    denom = probs.sum(dim=-1)  # [Hkv, G, NC, Qm*g]
    partial = q.new_empty(num_kv_heads, batch, rows * g, head_dim)
    probs = probs.view(num_kv_heads, batch, rows * g, chunk)
    for h in range(num_kv_heads):
        torch.bmm(probs[h], values[:, :, h], out=partial[h])
    numer = partial.view(num_kv_heads, groups, num_chunks, rows * g, head_dim)
    if num_chunks > 1:  # cumsum is a sequential scan: its last entry adds the chunks in order
        numer, denom = numer.cumsum(dim=2)[:, :, -1], denom.cumsum(dim=2)[:, :, -1]
    else:  # the scan of one chunk is that chunk, exactly
        numer, denom = numer[:, :, 0], denom[:, :, 0]
    out = q.new_empty(groups, rows, num_kv_heads, g, head_dim, dtype=out_dtype)
    torch.div(numer.view(num_kv_heads, groups, rows, g, head_dim),
              denom.view(num_kv_heads, groups, rows, g, 1), out=out.permute(2, 0, 1, 3, 4))
    return out.view(groups, rows, num_heads, head_dim)


def _gather_chunks(cache: torch.Tensor, block_ids: torch.Tensor, chunk: int) -> torch.Tensor:
    """[num_blocks, bs, Hkv, D] x [n] -> [n*bs/C, C, Hkv, D] float32."""
    _, bs, hkv, d = cache.shape
    gathered = cache.index_select(0, block_ids)
    return gathered.view(-1, chunk, hkv, d).float()


# ---------------------------------------------------------------- planning


def _get_tiles(meta: AttentionMetadata, group: int, device) -> list[_Tile]:
    key = ("invariant_tiles", group, str(device))
    if key not in meta._plan_cache:
        meta._plan_cache[key] = _build_tiles(meta, group, device)
    return meta._plan_cache[key]


def _build_tiles(meta: AttentionMetadata, group: int, device) -> list[_Tile]:
    """Short requests (decode, verification) padded into shared tiles: per
    query-length bucket (1, 2, 3-4, 5-8, 9-16), so one request verifying 8
    drafts does not pad every decoding request in the batch to 9 rows, and
    within a bucket grouped by context length (`partition_by_chunks`), so
    one long conversation does not pad every short one to its context
    (each chunk a tile holds per request is gathered, converted to float32
    and scored, needed or not). Long ones (prefill chunks) in tiles of
    QUERY_TILE rows each. How a request is tiled never changes its rows'
    reductions (module doc)."""
    starts = [0]
    for q in meta.query_lens:
        starts.append(starts[-1] + q)
    chunk = key_chunk_size(meta.block_size)
    by_rows: dict[int, list] = {}
    for r, q_len in enumerate(meta.query_lens):
        if q_len <= SHARED_TILE_MAX_QUERY:
            member = (r, list(range(starts[r], starts[r + 1])), meta.seq_lens_list[r] - q_len)
            num_chunks = -(-meta.seq_lens_list[r] // chunk)
            by_rows.setdefault(_power_of_two_bucket(q_len), []).append((num_chunks, member))
    tile_members = []
    for bucket in sorted(by_rows):
        members = sorted(by_rows[bucket], key=lambda item: -item[0])
        for first, end in partition_by_chunks([num_chunks for num_chunks, _ in members]):
            tile_members.append([member for _, member in members[first:end]])
    for r, q_len in enumerate(meta.query_lens):
        if q_len <= SHARED_TILE_MAX_QUERY:
            continue
        first = meta.seq_lens_list[r] - q_len
        for offset in range(0, q_len, QUERY_TILE):
            rows = list(range(starts[r] + offset, min(starts[r] + offset + QUERY_TILE, starts[r + 1])))
            tile_members.append([(r, rows, first + offset)])
    tiles = [_make_tile(members, meta, group, device) for members in tile_members]
    if len(tiles) == 1 and _is_identity(tile_members[0], tiles[0].rows, meta.num_tokens):
        tiles[0].pad_index = None
    return tiles


def partition_by_chunks(chunk_counts: list[int], tile_cost: int = TILE_COST_CHUNKS,
                        max_tile_chunks: int = MAX_TILE_CHUNKS) -> list[tuple[int, int]]:
    """Requests' key-chunk counts, in descending order, cut into contiguous
    tiles [first, end) at the least cost: each tile costs `tile_cost` plus
    its members times its largest count (every member is padded to it),
    and holds at most `max_tile_chunks` of those unless it is one request.
    Dynamic programming over the cut points: O(n^2) for n requests, planned
    once per forward for all its layers."""
    if any(a < b for a, b in zip(chunk_counts, chunk_counts[1:])):
        raise ValueError("chunk counts must be in descending order")
    n = len(chunk_counts)
    best, cut = [0.0] + [math.inf] * n, [0] * (n + 1)
    for end in range(1, n + 1):
        for first in range(end - 1, -1, -1):
            padded = chunk_counts[first] * (end - first)  # the first is the largest
            if padded > max_tile_chunks and end - first > 1:
                break  # an earlier first only adds members and padding
            cost = best[first] + tile_cost + padded
            if cost < best[end]:
                best[end], cut[end] = cost, first
    tiles, end = [], n
    while end > 0:
        tiles.append((cut[end], end))
        end = cut[end]
    return tiles[::-1]


def _power_of_two_bucket(length: int) -> int:
    """The power of two at or above `length`: a query length's shared tile bucket."""
    return 1 << max(0, length - 1).bit_length()


def _make_tile(members, meta: AttentionMetadata, group: int, device) -> _Tile:
    """members: (request, packed rows, position of the first row) each."""
    rows = max(len(m[1]) for m in members)
    rows = max(rows, -(-MIN_GEMM_ROWS // group))
    chunk = key_chunk_size(meta.block_size)
    last_positions = [first + len(token_rows) - 1 for _, token_rows, first in members]
    num_chunks = -(-(max(last_positions) + 1) // chunk)
    blocks_per_chunk = chunk // meta.block_size
    tables, positions, token_rows, pad_rows = [], [], [], []
    for g, (r, member_rows, first) in enumerate(members):
        table = meta.block_tables_list[r][: -(-meta.seq_lens_list[r] // meta.block_size)]
        tables.append((table + [0] * (num_chunks * blocks_per_chunk))[: num_chunks * blocks_per_chunk])
        # Padding rows repeat the last real position: never an empty softmax.
        positions.append([first + min(j, len(member_rows) - 1) for j in range(rows)])
        token_rows.extend(member_rows)
        pad_rows.extend(g * rows + j for j in range(len(member_rows)))
    return _Tile(
        token_index=to_device(token_rows, dtype=torch.long, device=device),
        pad_index=to_device(pad_rows, dtype=torch.long, device=device),
        groups=len(members),
        rows=rows,
        block_ids=to_device(tables, dtype=torch.long, device=device).view(-1),
        hidden=_hidden_keys(positions, group, num_chunks, chunk, device),
    )


def _hidden_keys(positions: list[list[int]], group: int, num_chunks: int, chunk: int, device) -> torch.Tensor:
    """[G, NC, Qm*g, C] bool: key position c*C + i is after the row's position."""
    pos = to_device(positions, dtype=torch.long, device=device)  # [G, Qm]
    pos = pos.repeat_interleave(group, dim=1)  # [G, Qm*g]
    keys = torch.arange(num_chunks * chunk, device=device).view(num_chunks, 1, chunk)
    return keys.unsqueeze(0) > pos.view(pos.shape[0], 1, -1, 1)


def _is_identity(members, rows: int, num_tokens: int) -> bool:
    """One tile (of these members, `rows` rows each) holding every token in
    order, with no padding rows; decided on the host lists."""
    n = len(members) * rows
    token_rows = [row for _, member_rows, _ in members for row in member_rows]
    return n == num_tokens and token_rows == list(range(n))
