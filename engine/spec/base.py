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

    `new_hidden` holds the target's hidden states (outputs of the drafter's
    `aux_layers`, concatenated in that order) for the tokens that got KV
    since the previous propose() for this request: positions
    [previous end, request.num_computed_tokens). None when the drafter
    declares no `aux_layers`. After `free()` (preemption) it restarts at 0.
    """

    request: Request
    max_tokens: int  # upper bound on drafts to propose for this request
    generator: torch.Generator
    new_hidden: torch.Tensor | None = None  # [n, len(aux_layers) * H]


class Drafter:
    """Proposes draft tokens for a batch of requests; owns its own state."""

    # Extra KV slots beyond the verified tokens that the drafter writes into.
    num_lookahead_slots: int = 0
    # Target layers whose outputs the drafter reads (EAGLE-3, DFlash, DSpark).
    aux_layers: tuple[int, ...] = ()
    # Whether drafting runs a model (then drafting what will not be verified
    # wastes time, and the adaptive policy trims the draft length).
    costs_compute: bool = True

    def propose(self, inputs: list[DraftInput], block_tables: dict[str, list[int]]) -> dict[str, DraftProposal]:
        raise NotImplementedError

    def free(self, request_ids: list[str]) -> None:
        """Drop per-request state (request finished, aborted or preempted)."""
