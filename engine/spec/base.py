"""The one interface every drafter implements.

Per engine step, for requests with speculation on:
1. `absorb(request, hidden)` after the target's forward, for every request
   that got KV this step (prefill chunks too): the request's tokens now
   include what was just emitted; `hidden` holds the target's features of
   the tokens whose KV now counts (None unless the drafter reads
   `aux_layers`). Only verified tokens ever arrive here, so drafters need no
   roll-back of state built from absorbed tokens.
2. `propose(inputs)` for the requests the scheduler lets draft (it decided
   how many drafts each may propose and reserved lookahead KV).
3. `forget(request_ids)` when requests leave the running set (finished,
   aborted or preempted; a preempted request is absorbed again from 0).

Confidence rule (speculation.md §4, enforced by tests for every drafter):
`DraftBlock.confidences[k]` may depend on the request's context, on drafts
before position k and on the distribution draft k is drawn from (e.g. its
largest probability), NEVER on the value of the drawn draft k itself.
Otherwise whether x_k is verified depends on x_k, and sampling is biased.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch

from scheduler.drafts import FREE_DRAFTING, DraftBlock, DraftEconomics
from scheduler.request import Request


@dataclass
class DraftInput:
    """One request to draft for: at most `max_tokens` drafts, sampled with
    `generator`; `block_ids` is its block table (lookahead KV reserved).
    `grammar` (engine.structured.matcher.RequestGrammar) is set for a request
    with a response_format: a drafter that samples from a distribution q
    must mask q with it (`draft_mask`), as the target's rows are masked.
    Whether a drafter skips a request for `economics` must not depend on
    what it would draw (the hybrid decides from history and load only)."""

    request: Request
    max_tokens: int
    generator: torch.Generator
    block_ids: list[int]
    grammar: Any = None
    # What a draft must be worth at the current load (the verify policy's):
    # a drafter whose drafting costs compute may skip drafting that is
    # expected to fall short.
    economics: DraftEconomics = FREE_DRAFTING

    @property
    def steps_saved_per_token(self) -> float:
        """The share of a step one more accepted draft saves the request: 1
        over the tokens it has emitted per step so far (each step emits one
        token of the target's plus the drafts accepted; 1 before any were).
        `economics.accepted_token_seconds` values a draft at a whole step;
        a request that speculation already speeds along finishes 1/r steps
        sooner per token at r tokens a step."""
        request = self.request
        steps = request.num_output_tokens - request.num_accepted_tokens
        return steps / request.num_output_tokens if steps > 0 else 1.0


class Drafter(ABC):
    """Proposes draft tokens for a batch of requests; owns its own state."""

    # The --speculative-method name; proposals carry it as their source.
    name: str = ""
    # Extra KV slots beyond the verified tokens that the drafter writes into.
    num_lookahead_slots: int = 0
    # Target layers whose outputs the drafter reads (EAGLE-3, DFlash, DSpark).
    aux_layers: tuple[int, ...] = ()
    # Whether drafting runs a model (then drafting what will not be verified
    # wastes time, and the policy's drafting backoff and length apply). A
    # drafter that weighs its own cost per request through
    # `DraftInput.economics` (the hybrid) says False.
    costs_compute: bool = True
    # The most drafts one proposal can hold (a block head's block size);
    # None: as many as asked for.
    max_draft_tokens: int | None = None

    @abstractmethod
    def absorb(self, request: Request, hidden: torch.Tensor | None) -> None:
        """Take in what the target confirmed for `request` (see module doc).
        hidden: [n, len(aux_layers) * H] for the n tokens that got KV, or None."""

    @abstractmethod
    def propose(self, inputs: list[DraftInput]) -> dict[str, DraftBlock]:
        """Drafts per request id; a request without drafts may be left out."""

    @abstractmethod
    def forget(self, request_ids: list[str]) -> None:
        """Drop per-request state (request finished, aborted or preempted)."""

    def events(self) -> dict[str, int]:
        """Monotonic counters of the drafter's own decisions, by event name
        (exported as `specserve:spec_drafter_events_total{event}`); none by default."""
        return {}
