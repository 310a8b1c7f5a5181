"""Token trees for greedy and seeded requests: a step verifies a
request's drafts and their alternative branches side by side and keeps the
branch the target's own choices follow furthest.

Each alternative branch runs as a request of its own in the packed forward
(`BranchForks.expand`): it shares the request's full KV blocks before the
anchor and writes its own rows into scratch blocks, the first of them a
copy of the request's partial block. So every attention path (the torch
and batch-invariant ones, flash-attn) computes a branch with plain causal
attention and no tree mask. After verification the request keeps the
branch with the longest accepted prefix (the main block on a tie); when
that is an alternative, the KV of its accepted drafts is copied into the
request's own slots (reserved for the main block, which is never shorter).

Why this is lossless: under greedy decoding the target's choice at each
position is fixed by the tokens before it, and so it is for a seeded
request (the Gumbel-max token of engine/gumbel.py, keyed by the seed and
the output position). A branch's accepted prefix is then exactly the
target's own continuation as far as it goes. Keeping the longest accepted
prefix, then the target's token after it, emits what plain decoding would:
only more of it per step. With batch-invariant kernels the extra rows
change no other row's result.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kernels.to_device import to_device
from scheduler.block_manager import cdiv
from scheduler.drafts import DraftBlock
from scheduler.output import ScheduledRequest
from scheduler.request import SamplingParams

# Alternative branches one step computes at most: the engine sizes the
# scratch pool for this many. They pay at light load, where few requests run.
FORKS_PER_STEP = 16


@dataclass
class TreeCounts:
    """Running totals of the alternative branches (read by /metrics)."""

    verified: int = 0  # branches computed as forks
    draft_tokens: int = 0  # their drafts
    wins: int = 0  # steps whose emitted drafts came from a fork
    accepted_tokens: int = 0  # the drafts those forks kept
    dropped: int = 0  # branches left out for want of scratch blocks

    def record_step(self, step: "StepForks") -> None:
        self.verified += len(step.forks)
        self.draft_tokens += sum(fork.item.num_spec_tokens for fork in step.forks)
        self.dropped += step.num_dropped

    def record_win(self, num_accepted: int) -> None:
        self.wins += 1
        self.accepted_tokens += num_accepted


@dataclass
class Fork:
    """One alternative branch computed as a request of its own this step."""

    main: ScheduledRequest  # the request's own item
    item: ScheduledRequest  # the branch: anchor + alternative drafts, on scratch blocks


@dataclass
class StepForks:
    """The forks of one step and the block copies they need first."""

    forks: list[Fork] = field(default_factory=list)
    partial_copies: list[tuple[int, int]] = field(default_factory=list)  # (request block, scratch block)
    num_dropped: int = 0  # alternatives left out for want of scratch blocks

    @property
    def items(self) -> list[ScheduledRequest]:
        return [fork.item for fork in self.forks]


class BranchForks:
    """Scratch KV blocks `first_block .. first_block + num_blocks - 1` (past
    every block the block manager hands out) where alternative branches are
    computed. They hold nothing between steps."""

    def __init__(self, first_block: int, num_blocks: int, block_size: int):
        self.first_block, self.num_blocks, self.block_size = first_block, num_blocks, block_size

    def expand(self, scheduled: list[ScheduledRequest]) -> StepForks:
        """A fork per alternative branch of the step's drafts, in order, while
        scratch blocks last."""
        step, free = StepForks(), list(range(self.first_block, self.first_block + self.num_blocks))
        for item in scheduled:
            for branch in item.drafts.alternatives:
                _check_can_branch(item)
                fork = self._fork(item, list(branch), free, step)
                if fork is None:
                    step.num_dropped += 1
                else:
                    step.forks.append(fork)
        return step

    def _fork(self, main: ScheduledRequest, branch: list[int], free: list[int], step: StepForks) -> Fork | None:
        size, start = self.block_size, main.start_position
        shared = start // size  # the request's blocks wholly before the anchor
        needed = cdiv(start + 1 + len(branch), size) - shared
        if needed > len(free):
            return None
        scratch, free[:] = free[:needed], free[needed:]
        if start % size:  # the anchor's block already holds earlier tokens
            step.partial_copies.append((main.block_ids[shared], scratch[0]))
        drafts = DraftBlock(branch, [1.0] * len(branch), None, main.drafts.source)
        item = ScheduledRequest(request=main.request, start_position=start, num_query_tokens=1,
                                block_ids=main.block_ids[:shared] + scratch, drafts=drafts)
        return Fork(main, item)


def can_branch(params: SamplingParams) -> bool:
    """Greedy and seeded requests: each row emits a token fixed by the
    tokens before it (the argmax, or the Gumbel-max token keyed by the seed
    and the output position), whatever was drafted, so keeping the branch
    that matched furthest is exact. Not with logprobs (kept for one branch)."""
    return (params.greedy or params.seed is not None) and params.logprobs is None


def _check_can_branch(item: ScheduledRequest) -> None:
    if not (can_branch(item.request.sampling_params) and item.num_query_tokens == 1 and item.samples):
        raise ValueError(f"{item.request.request_id}: drafts branch only for a greedy or seeded decode step "
                         "without logprobs")


def copy_blocks(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], pairs: list[tuple[int, int]]) -> None:
    """Copy whole KV blocks (source, destination) in every layer."""
    if not pairs:
        return
    _copy_rows(kv_caches, [s for s, _ in pairs], [d for _, d in pairs], flat=False)


def copy_slots(kv_caches: list[tuple[torch.Tensor, torch.Tensor]], sources: list[int],
               destinations: list[int]) -> None:
    """Copy single token slots (block * block_size + offset) in every layer."""
    if sources:
        _copy_rows(kv_caches, sources, destinations, flat=True)


def _copy_rows(kv_caches, sources: list[int], destinations: list[int], flat: bool) -> None:
    device = kv_caches[0][0].device
    src = to_device(sources, dtype=torch.long, device=device)
    dst = to_device(destinations, dtype=torch.long, device=device)
    for cache in (tensor for layer in kv_caches for tensor in layer):
        rows = cache.view(-1, *cache.shape[2:]) if flat else cache
        rows.index_copy_(0, dst, rows.index_select(0, src))


def accepted_slots(main: ScheduledRequest, fork: ScheduledRequest, num_accepted: int,
                   block_size: int) -> tuple[list[int], list[int]]:
    """(fork slots, request slots) of the fork's accepted drafts: positions
    anchor + 1 .. anchor + num_accepted."""
    positions = range(main.start_position + 1, main.start_position + 1 + num_accepted)
    return ([_slot(fork.block_ids, p, block_size) for p in positions],
            [_slot(main.block_ids, p, block_size) for p in positions])


def _slot(table: list[int], position: int, block_size: int) -> int:
    return table[position // block_size] * block_size + position % block_size
