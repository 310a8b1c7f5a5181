"""The two records where the scheduler and the model runner meet (no torch)."""
from __future__ import annotations

from dataclasses import dataclass, field

from scheduler.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step.

    The runner feeds `all_token_ids[start_position : start_position +
    num_query_tokens]` followed by the first `num_spec_tokens` of
    `request.spec_token_ids` (the drafts to verify), at positions starting
    from `start_position`. `num_query_tokens` counts real tokens only (it does
    not include the drafts). If the real tokens reach the end of the
    sequence (`samples`), the runner samples: it verifies the drafts and emits
    1 + accepted tokens; otherwise this was a partial prefill chunk.
    """

    request: Request
    start_position: int
    num_query_tokens: int
    num_spec_tokens: int
    block_ids: list[int]

    @property
    def num_new_tokens(self) -> int:
        """Tokens this request adds to the packed batch (real + drafts)."""
        return self.num_query_tokens + self.num_spec_tokens

    @property
    def samples(self) -> bool:
        return self.start_position + self.num_query_tokens == self.request.num_tokens

    @property
    def spec_token_ids(self) -> list[int]:
        return self.request.spec_token_ids[: self.num_spec_tokens]


@dataclass
class SchedulerOutput:
    """Everything the runner needs for one step, in packed-batch order."""

    scheduled: list[ScheduledRequest] = field(default_factory=list)
    # Requests that left the running set since the last step (finished,
    # aborted or preempted): runner-side per-request state can be dropped.
    freed_request_ids: list[str] = field(default_factory=list)

    @property
    def total_num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

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
    `next_spec_token_ids` / `next_spec_confidences` are the drafts proposed
    for the following step; update_from_output installs them (empty clears
    stale drafts). The engine's drafter runs after the update, once stop
    checks have cut the sequence, and overwrites the drafts it makes.
    """

    sampled_token_ids: dict[str, list[int]] = field(default_factory=dict)
    logprobs: dict[str, list[TokenLogprob]] = field(default_factory=dict)
    num_accepted: dict[str, int] = field(default_factory=dict)
    next_spec_token_ids: dict[str, list[int]] = field(default_factory=dict)
    next_spec_confidences: dict[str, list[float]] = field(default_factory=dict)
