"""How each emitted token was produced, and the load of the step that made it.

Every `RequestOutput` of a sampling step carries one `StepTrace`: a few
numbers per request and step (the block verified, how much of it survived,
who drafted it) plus one `StepLoad` shared by all requests of the step, and
the text each new token added. Per-token sources are derived on demand
(`sources`), so nothing is built token by token unless somebody asks; the
server's SSE extension (`"specserve": {"trace": true}`) and the playground
page are the ones that ask.

No torch here: the server reads these types.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from scheduler.output import RunnerOutput, SchedulerOutput


class TokenSource(str, Enum):
    """How one emitted token came about (speculation.md's verification step)."""

    ACCEPTED = "accepted"  # a draft token the target accepted
    CORRECTED = "corrected"  # the target's own token at the first rejected position
    BONUS = "bonus"  # the target's extra token after a fully accepted block
    PLAIN = "plain"  # the step verified no drafts for this request


@dataclass(frozen=True)
class StepLoad:
    """The load of one engine step, the same for every request in it.

    `num_requests`: requests in the packed batch; `num_tokens`: its query
    tokens (real tokens and drafts); `num_waiting`: the queue once the step
    was scheduled; `step_ms`: the step's wall time, drafting included.
    """

    num_requests: int
    num_tokens: int
    num_waiting: int
    step_ms: float

    @property
    def steps_per_second(self) -> float:
        """SPS as measured on this step (the step-cost curve's quantity)."""
        return 1000.0 / self.step_ms if self.step_ms > 0 else 0.0


@dataclass(frozen=True)
class StepTrace:
    """One request's share of one sampling step.

    `num_verified` drafts were verified (0: a plain decode step) and
    `num_accepted` of them survived; the step emitted the accepted drafts and
    then one corrected or bonus token, of which a stop condition may have
    kept only a prefix. `drafter` names who proposed the block ("" without
    one). `token_texts[i]` is the text new token i added to the output ("" while
    it ends inside an incomplete character; the stop-string cut is not
    applied here, so the texts may run past the streamed text).
    """

    num_verified: int
    num_accepted: int
    drafter: str
    load: StepLoad
    token_texts: tuple[str, ...] = field(default_factory=tuple)

    def source(self, position: int) -> TokenSource:
        """How the step's emitted token number `position` was produced."""
        if self.num_verified == 0:
            return TokenSource.PLAIN
        if position < self.num_accepted:
            return TokenSource.ACCEPTED
        return TokenSource.BONUS if self.num_accepted == self.num_verified else TokenSource.CORRECTED

    def sources(self) -> list[TokenSource]:
        """The source of every token this output carries, in order."""
        return [self.source(i) for i in range(len(self.token_texts))]


def step_traces(sched: SchedulerOutput, runner_out: RunnerOutput, load: StepLoad) -> dict[str, StepTrace]:
    """The trace of every request that sampled in this step, by request id
    (token texts are added when the output is built)."""
    traces = {}
    for item in sched.scheduled:
        sampled = runner_out.sampled_token_ids.get(item.request.request_id)
        if sampled is None:
            continue  # a partial prefill chunk emits nothing
        traces[item.request.request_id] = StepTrace(
            num_verified=item.num_spec_tokens, num_accepted=len(sampled) - 1,
            drafter=item.drafts.source if item.num_spec_tokens else "", load=load)
    return traces
