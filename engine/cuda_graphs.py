"""CUDA graphs for the target's decode and verification steps.

A decode or verification step launches a few hundred small kernels; on a
GPU their launch cost is the step. The graph runner captures the whole
target forward once per padded size (a bucket of query tokens: 1, 2, 4,
... 256) and replays it: the step's batch is padded to the smallest bucket
that holds it (`pad_step`: padding rows are requests of their own in a
block no request owns), its inputs copied into static buffers, and the
graph replayed. Steps with a prefill chunk (a request with more
than GRAPH_MAX_QUERY query tokens) or more tokens than the largest bucket
run eagerly.

In a graph, attention is always the Triton kernel: it reads everything
that changes per step (block tables, each token's request and position,
KV slots) from the static buffers, where the other paths plan on the host.
With batch-invariant kernels the padding rows change no real row's
result, so replaying a bucket gives the eager forward's numbers.
"""
from __future__ import annotations

import logging

import torch

from kernels.attention import AttentionMetadata, token_layout

log = logging.getLogger("specserve.engine")

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# Requests with more query tokens (prefill chunks) make a step run eagerly.
GRAPH_MAX_QUERY = 16


def choose_bucket(query_lens: list[int], buckets: tuple[int, ...] = DEFAULT_BUCKETS) -> int | None:
    """The smallest bucket holding a step of these query lengths, or None
    when the step runs eagerly (a prefill chunk, or too many tokens)."""
    if not query_lens or max(query_lens) > GRAPH_MAX_QUERY:
        return None
    total = sum(query_lens)
    return next((b for b in sorted(buckets) if b >= total), None)


def pad_step(input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, rows: int,
             pad_block: int) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """A packed step padded to `rows` tokens: each padding token is a
    request of its own at position 0 in block `pad_block` (which no request
    owns), so it writes and reads nothing real; real rows come first."""
    padding = rows - meta.num_tokens
    if padding < 0:
        raise ValueError(f"{meta.num_tokens} tokens do not fit in {rows} rows")
    padded = AttentionMetadata.build(meta.query_lens + [1] * padding, meta.seq_lens_list + [1] * padding,
                                     meta.block_tables_list + [[pad_block]] * padding, meta.block_size,
                                     input_ids.device)
    zeros = input_ids.new_zeros(padding)
    return torch.cat([input_ids, zeros]), torch.cat([positions, zeros]), padded


class _StaticInputs:
    """Device buffers a captured graph reads, sized for the largest bucket."""

    def __init__(self, rows: int, max_blocks: int, pad_block: int, block_size: int, device):
        def buffer(*shape, dtype):
            return torch.zeros(*shape, dtype=dtype, device=device)
        self.input_ids = buffer(rows, dtype=torch.long)
        self.positions = buffer(rows, dtype=torch.long)
        self.slot_mapping = buffer(rows, dtype=torch.long).fill_(pad_block * block_size)
        self.token_request = buffer(rows, dtype=torch.int32)
        self.token_position = buffer(rows, dtype=torch.int32)
        self.block_tables = buffer(rows, max_blocks, dtype=torch.int32).fill_(pad_block)

    def load(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata) -> None:
        """Copy a step padded to a bucket's rows into the buffers."""
        rows = meta.num_tokens
        requests, token_positions = token_layout(meta, self.input_ids.device)
        self.input_ids[:rows].copy_(input_ids)
        self.positions[:rows].copy_(positions)
        self.slot_mapping[:rows].copy_(meta.slot_mapping)
        self.token_request[:rows].copy_(requests)
        self.token_position[:rows].copy_(token_positions)
        tables = meta.block_tables
        self.block_tables[:tables.shape[0], :tables.shape[1]].copy_(tables)


class CudaGraphRunner:
    """Captures the target forward per bucket on first use and replays it.

    `pad_block`: a KV block no request owns (padding rows write there);
    `max_position`: the largest position a request reaches (the RoPE table
    is grown to it before capture, so a replay never allocates).
    """

    def __init__(self, model, kv_caches, block_size: int, max_model_len: int, pad_block: int, device,
                 buckets: tuple[int, ...] = DEFAULT_BUCKETS):
        self.model, self.kv_caches = model, kv_caches
        self.block_size, self.pad_block, self.device = block_size, pad_block, device
        self.buckets = tuple(sorted(buckets))
        self.max_position = max_model_len - 1
        # Room for a full context plus a few blocks drafted ahead of it.
        self.max_blocks = -(-max_model_len // block_size) + 8
        self.inputs = _StaticInputs(self.buckets[-1], self.max_blocks, pad_block, block_size, device)
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, tuple]] = {}
        self.pool = None

    def bucket(self, meta: AttentionMetadata) -> int | None:
        """The bucket a step runs in, or None to run it eagerly."""
        if max((len(t) for t in meta.block_tables_list), default=0) > self.max_blocks:
            return None
        return choose_bucket(meta.query_lens, self.buckets)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                aux_layers: tuple[int, ...]):
        """(hidden [bucket, H], aux) of the step padded to its bucket, real
        rows first, or None when it runs eagerly. The tensors are the
        graph's static outputs: valid until the next replay."""
        bucket = self.bucket(meta)
        if bucket is None:
            return None
        return self.replay(*pad_step(input_ids, positions, meta, bucket, self.pad_block), tuple(aux_layers))

    def replay(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
               aux_layers: tuple[int, ...]):
        """Run a step already padded to a bucket through that bucket's graph."""
        key = (meta.num_tokens, aux_layers)
        if key not in self.graphs:
            self.graphs[key] = self._capture(*key)
        graph, outputs = self.graphs[key]
        self.inputs.load(input_ids, positions, meta)
        graph.replay()
        return outputs

    def _static_meta(self, rows: int) -> AttentionMetadata:
        inputs = self.inputs
        meta = AttentionMetadata(
            query_start_loc=inputs.token_request[:1], seq_lens=inputs.token_position[:1],  # unread
            block_tables=inputs.block_tables[:rows], slot_mapping=inputs.slot_mapping[:rows],
            query_lens=[1] * rows, seq_lens_list=[self.max_position + 1] * rows, max_query_len=1,
            max_seq_len=self.max_position + 1, block_size=self.block_size, force_kernel="triton")
        meta._plan_cache[("token_layout", str(inputs.input_ids.device))] = (
            inputs.token_request[:rows], inputs.token_position[:rows])
        return meta

    def _forward(self, rows: int, aux_layers: tuple[int, ...]):
        inputs = self.inputs
        return self.model(inputs.input_ids[:rows], inputs.positions[:rows], self.kv_caches,
                          self._static_meta(rows), aux_layers=aux_layers)

    def _capture(self, rows: int, aux_layers: tuple[int, ...]):
        """Warm up on a side stream (Triton compiles, the RoPE table grows),
        then capture. The buffers hold padding rows only while capturing."""
        self._reset_to_padding()
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._forward(rows, aux_layers)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            outputs = self._forward(rows, aux_layers)
        self.pool = graph.pool()
        log.info("captured a CUDA graph for %d query tokens", rows)
        return graph, outputs

    def _reset_to_padding(self) -> None:
        inputs = self.inputs
        inputs.slot_mapping.fill_(self.pad_block * self.block_size)
        inputs.token_request.zero_()
        inputs.token_position.zero_()
        inputs.block_tables.fill_(self.pad_block)
