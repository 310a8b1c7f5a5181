"""Start-up profile of the target's step cost against batch tokens.

Runs real forwards of decode-shaped batches (many requests, few query tokens
each, a short context) for each probe size, and caches the result per
model, device, dtype, kernels (batch-invariant or not) and thread count so
later starts skip it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import torch

from engine.models.gguf_loader import cache_root
from kernels.attention import AttentionMetadata
from kernels.to_device import to_device
from scheduler.load import StepCostModel, probe_sizes

log = logging.getLogger("specserve.profiler")

CONTEXT_TOKENS = 128  # typical context behind each query token while profiling


def profile_cache_path(model_path: str, device: str, dtype: str, max_tokens: int,
                       kernels: str = "") -> str:
    """`kernels`: the model's kernel description (its resolved dtype, which
    kernels run the linears, batch-invariant or free): each has its own curve."""
    key = f"{os.path.abspath(model_path)}|{device}|{dtype}|{kernels}|{torch.get_num_threads()}|{max_tokens}|v3"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return os.path.join(cache_root(), "profiles", f"step-cost-{digest}.json")


def load_or_profile(runner, model_path: str, device: str, dtype: str, max_tokens: int,
                    max_seqs: int, time_budget_s: float = 20.0) -> StepCostModel:
    kernels = getattr(runner.model, "kernel_description", "")
    path = profile_cache_path(model_path, device, dtype, max_tokens, kernels)
    if os.path.exists(path):
        with open(path) as f:
            return StepCostModel.from_json(f.read())
    cost = profile_step_cost(runner, max_tokens, max_seqs, time_budget_s)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(cost.to_json())
    os.replace(tmp, path)
    return cost


@torch.inference_mode()
def profile_step_cost(runner, max_tokens: int, max_seqs: int, time_budget_s: float,
                      passes: int = 3) -> StepCostModel:
    """Best-of-`passes` step seconds at each probe size. Sizes are visited
    round-robin, so a burst of load from other processes hits all sizes of a
    pass alike and the curve's SHAPE (all the policy uses) survives it."""
    started = time.perf_counter()
    num_blocks = runner.kv_caches[0][0].shape[0]
    batches = {}
    for size in probe_sizes(max_tokens):
        batch = decode_shaped_batch(size, max_seqs, runner.block_size, num_blocks, runner.device)
        if batch is None:
            break
        batches[size] = batch
    best: dict[int, float] = {}
    for _ in range(passes):
        for size, batch in batches.items():
            best[size] = min(best.get(size, float("inf")), _time_forward(runner, *batch))
            if time.perf_counter() - started > time_budget_s:
                break
    sizes = sorted(best)
    log.info("step cost profile: %s", json.dumps([(b, round(best[b] * 1000, 2)) for b in sizes]))
    return StepCostModel(sizes, [best[b] for b in sizes])


def decode_shaped_batch(num_tokens: int, max_seqs: int, block_size: int, num_blocks: int, device):
    """`num_tokens` query tokens spread over up to `max_seqs` requests, each
    behind CONTEXT_TOKENS of (garbage, never read by anyone else) context."""
    num_seqs = max(1, min(num_tokens, max_seqs))
    query_lens = [num_tokens // num_seqs + (i < num_tokens % num_seqs) for i in range(num_seqs)]
    seq_lens = [CONTEXT_TOKENS + q for q in query_lens]
    blocks_per_seq = -(-max(seq_lens) // block_size)
    if blocks_per_seq * num_seqs > num_blocks:
        return None
    tables = [list(range(i * blocks_per_seq, (i + 1) * blocks_per_seq)) for i in range(num_seqs)]
    meta = AttentionMetadata.build(query_lens, seq_lens, tables, block_size, device)
    positions = to_device([p for q, s in zip(query_lens, seq_lens) for p in range(s - q, s)], device=device)
    tokens = torch.zeros(num_tokens, dtype=torch.long, device=device)
    return tokens, positions, meta


def _time_forward(runner, tokens, positions, meta) -> float:
    begin = time.perf_counter()
    hidden, _ = runner.forward(tokens, positions, meta)  # a CUDA graph's replay where one fits
    runner.model.compute_logits(hidden[:meta.num_tokens])  # verification needs logits at every query row
    if str(runner.device).startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - begin
