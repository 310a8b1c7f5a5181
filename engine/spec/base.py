"""The one interface every drafter implements."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from scheduler.request import Request


@dataclass
class DraftProposal:
    """Drafts for one request.

    `probs` is the draft distribution at each drafted position ([k, V]), or
    None for a deterministic drafter (its distribution is one-hot at the
    proposed token). `confidences[k]` estimates the probability that draft k
    survives verification given that drafts before it did.
    """

    token_ids: list[int]
    probs: torch.Tensor | None
    confidences: list[float]


@dataclass
class DraftInput:
    """What a drafter sees for one request after a verification step.

    `hidden_rows` indexes the target's hidden states of this step's packed
    batch for the request's query tokens (for drafters that read them).
    """

    request: Request
    max_tokens: int  # upper bound on drafts to propose for this request
    generator: torch.Generator


class Drafter:
    """Proposes draft tokens for a batch of requests; owns its own state."""

    # Extra KV slots beyond the verified tokens that the drafter writes into.
    num_lookahead_slots: int = 0

    def propose(self, inputs: list[DraftInput], block_tables: dict[str, list[int]]) -> dict[str, DraftProposal]:
        raise NotImplementedError

    def free(self, request_ids: list[str]) -> None:
        """Drop per-request state (request finished, aborted or preempted)."""
