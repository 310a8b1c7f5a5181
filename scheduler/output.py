"""The records where the scheduler, the model runner and the drafter meet (no torch).

Everything that crosses between them travels here, never in side attributes:

- `DraftBlock`: drafts proposed for one request (tokens, their draft
  distributions, confidences) until they are verified;
- `SchedulerOutput` / `ScheduledRequest`: what the runner computes in one step,
  including the prefix of drafts to verify;
- `RunnerOutput`: what the step produced (emitted tokens, acceptance counts,
  logprobs, target features for drafters that read them);
- `DraftSlot`: a request the scheduler lets draft for the next step, with the
  room it has and its block table (KV for lookahead already reserved).

Tensors (draft distributions, target features) are carried as opaque values:
the scheduler only slices them along their first axis.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from scheduler.drafts import FREE_DRAFTING, NO_DRAFTS, DraftBlock, DraftEconomics
from scheduler.request import Request




@dataclass
class ScheduledRequest:
    """One request's share of a step.

    The runner feeds `all_token_ids[start_position : start_position +
    num_query_tokens]` followed by `drafts.token_ids` (the drafts to verify),
    at positions starting from `start_position`. `num_query_tokens` counts
    real tokens only. If the real tokens reach the end of the sequence
    (`samples`), the runner samples: it verifies the drafts and emits
    1 + accepted tokens; otherwise this was a partial prefill chunk.
    """

    request: Request
    start_position: int
    num_query_tokens: int
    block_ids: list[int]
    drafts: DraftBlock = NO_DRAFTS
    # On the step that admits the request after a prefix-cache hit: the
    # leading tokens whose KV came from the cache, not from this forward (a
    # drafter that reads target features gets theirs from the runner's
    # feature cache). 0 on every other step.
    num_cached_prefix: int = 0

    @property
    def num_spec_tokens(self) -> int:
        return len(self.drafts)

    @property
    def spec_token_ids(self) -> list[int]:
        return self.drafts.token_ids

    @property
    def num_new_tokens(self) -> int:
        """Tokens this request adds to the packed batch (real + drafts)."""
        return self.num_query_tokens + self.num_spec_tokens

    @property
    def num_rows(self) -> int:
        """Rows this request adds to the packed forward: its new tokens and
        its drafts' alternative branches (each with its own anchor row)."""
        return self.num_new_tokens + self.drafts.num_alternative_rows

    @property
    def samples(self) -> bool:
        return self.start_position + self.num_query_tokens == self.request.num_tokens


@dataclass
class SchedulerOutput:
    """Everything the runner needs for one step, in packed-batch order."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    # Requests that left the running set since the last step (finished,
    # aborted or preempted): per-request state elsewhere can be dropped.
    freed_request_ids: list[str] = field(default_factory=list)

    @property
    def total_num_tokens(self) -> int:
        return sum(s.num_rows for s in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


@dataclass
class TokenLogprob:
    """Logprob of one emitted token and its top alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


@dataclass
class RunnerOutput:
    """What one forward step produced, keyed by request id.

    `sampled_token_ids[rid]` holds the emitted tokens in order: accepted
    drafts then one recovered or bonus token; missing for partial prefill
    chunks. `num_accepted[rid]` is how many of the verified drafts survived.
    `hidden_states[rid]` holds the target's features (the drafter's
    `aux_layers`, concatenated) for the tokens whose KV counts after this
    step: the real query tokens and the accepted drafts, in order.
    """

    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[TokenLogprob]] = field(default_factory=dict)
    num_accepted: dict[str, int] = field(default_factory=dict)
    # Where an alternative branch's drafts were emitted (engine/spec/tree.py):
    # how many of the request's own block survived, what its confidences
    # are calibrated against.
    block_accepted: dict[str, int] = field(default_factory=dict)
    hidden_states: dict[str, Any] = field(default_factory=dict)


@dataclass
class DraftSlot:
    """A request that may draft for the next step.

    `max_tokens` bounds the drafts (room left in max_tokens and the context,
    the drafter's block, the policy's draft length); `block_ids` is the
    request's block table with the drafter's lookahead KV slots reserved.
    """

    request: Request
    max_tokens: int
    block_ids: list[int]
    # What a draft must be worth at the current load (VerifyPolicy.draft_economics).
    economics: DraftEconomics = FREE_DRAFTING
