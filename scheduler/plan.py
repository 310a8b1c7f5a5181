"""A step in the making: the token budget and each request's tentative share."""
from __future__ import annotations

from dataclasses import dataclass, field

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


@dataclass
class StepPlan:
    """A tentative share of the step for one request, before blocks are allocated."""

    request: Request
    num_query_tokens: int
    num_spec_tokens: int = 0
    # Rows granted to the drafts' alternative branches (greedy token trees):
    # computed this step, but no KV of theirs stays with the request.
    num_alternative_rows: int = 0
    # Slots reserved past the end for a draft model's KV; only worth it when
    # this step samples, and dropped first when blocks are short.
    num_lookahead_slots: int = 0
    block_ids: list[int] = field(default_factory=list)  # the table once allocated
    # On admission: leading tokens whose KV the prefix cache already holds.
    num_cached_prefix: int = 0

    @property
    def samples(self) -> bool:
        request = self.request
        return request.num_computed_tokens + self.num_query_tokens == request.num_tokens

    @property
    def can_verify(self) -> bool:
        """In decode (its only real token is the last sampled one), with drafts."""
        request = self.request
        in_decode = request.num_tokens - request.num_computed_tokens == 1
        return in_decode and self.num_query_tokens == 1 and bool(request.drafts)

    def draft_cap(self, wanted: int, max_model_len: int) -> int:
        """`wanted` drafts cut to those proposed and to the context: even if
        every draft and the bonus token are accepted, the sequence must stay
        within max_model_len."""
        room = max_model_len - self.request.num_tokens - 1
        return max(0, min(wanted, len(self.request.drafts), room))

    @property
    def num_slots(self) -> int:
        request = self.request
        return (request.num_computed_tokens + self.num_query_tokens + self.num_spec_tokens
                + self.num_lookahead_slots)

    @property
    def drafts(self) -> DraftBlock:
        """The drafts this step verifies: a prefix of the request's, with the
        alternatives that fit in the rows granted to them."""
        if not self.num_spec_tokens:
            return NO_DRAFTS
        return self.request.drafts.prefix(self.num_spec_tokens).within_alternative_rows(self.num_alternative_rows)

    def drop_optional_slots(self) -> bool:
        """Give up the lookahead slots; False when there are none. (Drafts
        are planned after allocation, within the KV room: never dropped.)"""
        if self.num_lookahead_slots:
            self.num_lookahead_slots = 0
            return True
        return False
