"""Who drafts for the next step, and how many drafts (no torch)."""
from __future__ import annotations

from dataclasses import dataclass

from scheduler.policies import VerifyPolicy
from scheduler.request import Request


@dataclass(frozen=True)
class DraftingLimits:
    """What the scheduler must know about the installed drafter.

    `max_tokens`: the most drafts per request and step (--num-speculative-
    tokens, clamped to what the drafter can draft). `num_lookahead_slots`:
    KV slots past the verified tokens the drafter writes into.
    `costs_compute`: drafting runs a model, so the policy's drafting backoff
    and draft length apply (drafting what will not be verified wastes time).
    """

    max_tokens: int
    num_lookahead_slots: int = 0
    costs_compute: bool = True


def draft_room(request: Request, limits: DraftingLimits, policy: VerifyPolicy,
               max_model_len: int) -> int:
    """Drafts worth proposing for `request`'s next step: none that could
    never be verified (past max_tokens or the context), none the policy
    would not verify (its drafting backoff and draft length apply to
    drafters whose drafting costs compute)."""
    params = request.sampling_params
    if not params.speculative:
        return 0
    max_draft = limits.max_tokens
    if limits.costs_compute:
        if not policy.should_draft(request.request_id):
            return 0
        max_draft = policy.draft_length(request.request_id, max_draft)
    return min(max_draft, params.max_tokens - request.num_output_tokens - 1,
               max_model_len - request.num_tokens - 1)
