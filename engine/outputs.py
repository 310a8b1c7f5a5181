"""What the engine hands back to its callers (the server), per step and overall."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.trace import StepTrace
from scheduler.load import LoadStats
from scheduler.output import TokenLogprob
from scheduler.policies import PolicyStats


@dataclass
class RequestOutput:
    """The increment one request gained in one engine step.

    `new_text` is the detokenized delta (stop strings already cut out);
    `finish_reason` is 'stop', 'length' or 'abort' once finished. `trace`
    says how the new tokens were produced and under what load (None for an
    output that no sampling step made, e.g. a request finished unscheduled).
    """

    request_id: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    logprobs: list[TokenLogprob] | None = None
    # Speculation figures for this request so far.
    num_spec_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    trace: StepTrace | None = None


@dataclass
class SourceCounts:
    """Speculative counters of the drafts one source proposed (vLLM's meanings)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    def record(self, num_draft_tokens: int, num_accepted_tokens: int) -> None:
        """One verification step of this source's block."""
        self.num_drafts += 1
        self.num_draft_tokens += num_draft_tokens
        self.num_accepted_tokens += num_accepted_tokens


@dataclass
class EngineStats:
    """A snapshot of engine counters and gauges, read by /metrics."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0  # fraction of KV blocks in use
    num_preemptions: int = 0
    # Tokens looked up in the prefix cache on admission, and found (vLLM's meanings).
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    prompt_tokens: int = 0
    generation_tokens: int = 0
    num_steps: int = 0
    # Speculative decoding, with vLLM's meanings.
    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    # The same counters per drafter that proposed the block (`DraftBlock.source`:
    # the hybrid's n-gram and head blocks apart).
    spec_by_source: dict[str, SourceCounts] = field(default_factory=dict)
    # The drafter's own counters (`Drafter.events()`), e.g. the hybrid's skipped head runs.
    drafter_events: dict[str, int] = field(default_factory=dict)
    # Drafts cut before verification because the request's grammar forbids them.
    num_grammar_cut_draft_tokens: int = 0
    # Greedy token trees (engine/spec/tree.py, the runner's TreeCounts):
    # alternative branches verified and their drafts, the steps one of them
    # won and the drafts it kept, and branches left out for want of scratch
    # KV blocks.
    num_alternatives: int = 0
    num_alternative_draft_tokens: int = 0
    num_alternative_wins: int = 0
    num_alternative_accepted_tokens: int = 0
    num_alternatives_dropped: int = 0
    # What the verification policy reports (empty without speculation).
    policy: PolicyStats = field(default_factory=PolicyStats)
    # The load the scheduler saw and where the step budget went.
    load: LoadStats = field(default_factory=LoadStats)

    @property
    def mean_accepted_length(self) -> float:
        """Tokens emitted per verification step, bonus included."""
        if not self.num_drafts:
            return 0.0
        return 1.0 + self.num_accepted_tokens / self.num_drafts


class QueueFullError(RuntimeError):
    """The engine's waiting queue is full; the caller should retry later."""


class EngineDeadError(RuntimeError):
    """The engine loop crashed; no request can be served."""


class RequestFailedError(RuntimeError):
    """The engine failed while serving this one request (an error tied to it:
    its parameters, its stop check, its drafts, or a forward that fails only
    with it in the batch). The request is over and its KV freed; the other
    requests go on. The cause is in the engine's log."""

    def __init__(self, request_id: str, stage: str, cause: BaseException):
        super().__init__(f"request {request_id} failed in the engine ({stage}): {cause!r}")
        self.request_id = request_id
        self.stage = stage


class EngineStalledError(RuntimeError):
    """The engine cannot make progress: a batched stage failed for every
    request, alone too, several steps in a row. Nothing is attributable to a
    request; the engine must be restarted."""
