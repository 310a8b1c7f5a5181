"""A step in the making: the token budget and each request's tentative share."""
from __future__ import annotations

from dataclasses import dataclass

from scheduler.drafts import NO_DRAFTS, DraftBlock
from scheduler.request import Request


class TokenBudget:
    """Tokens one step may still add to the packed batch."""

    def __init__(self, num_tokens: int):
        self.left = num_tokens

    def take(self, wanted: int) -> int:
        granted = max(0, min(wanted, self.left))
        self.left -= granted
        return granted

    def give_back(self, num_tokens: int) -> None:
        self.left += num_tokens


@dataclass
class StepPlan:
    """A tentative share of the step for one request, before blocks are allocated."""

    request: Request
    num_query_tokens: int
    num_spec_tokens: int = 0
    # Slots reserved past the end for a draft model's KV; only worth it when
    # this step samples, and dropped first when blocks are short.
    num_lookahead_slots: int = 0

    @property
    def samples(self) -> bool:
        request = self.request
        return request.num_computed_tokens + self.num_query_tokens == request.num_tokens

    @property
    def num_slots(self) -> int:
        request = self.request
        return (request.num_computed_tokens + self.num_query_tokens + self.num_spec_tokens
                + self.num_lookahead_slots)

    @property
    def drafts(self) -> DraftBlock:
        """The drafts this step verifies: a prefix of the request's."""
        return self.request.drafts.prefix(self.num_spec_tokens) if self.num_spec_tokens else NO_DRAFTS

    def drop_optional_slots(self, budget: TokenBudget) -> bool:
        """Give up drafts, else lookahead; False when nothing is left to give up."""
        if self.num_spec_tokens:
            budget.give_back(self.num_spec_tokens)
            self.num_spec_tokens = 0
            return True
        if self.num_lookahead_slots:
            self.num_lookahead_slots = 0
            return True
        return False
