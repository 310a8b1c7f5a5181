"""Fixed draft lengths: verify up to k drafts per request, first come first served."""
from __future__ import annotations

from scheduler.load import IDLE, LoadSignal
from scheduler.policies.base import LengthHistogram, PolicyContext, PolicyStats, VerifyPolicy
from scheduler.policies.registry import register_policy
from scheduler.request import Request


class StaticPolicy(VerifyPolicy):
    """Verify a fixed number k of drafts (fewer when fewer were proposed, or
    the budget runs out); k=None verifies all. Load and confidences are
    ignored; the scheduler still gives admissions the budget first and cuts
    drafts to the KV room, so a seeded request's verification lengths stay
    fixed only while the server has room."""

    def __init__(self, k: int | None, max_length: int = 16):
        self.k = k
        self.lengths = LengthHistogram(max(k or 0, max_length))

    def choose_lengths(self, candidates: list[Request], budget_left: int, num_emitting: int = 0,
                       load: LoadSignal = IDLE) -> dict[str, int]:
        lengths = {}
        for request in candidates:
            proposed = len(request.drafts)
            wanted = proposed if self.k is None else min(self.k, proposed)
            lengths[request.request_id] = length = max(0, min(wanted, budget_left))
            budget_left -= length
        self.lengths.record(lengths)
        return lengths

    # A fixed policy learns nothing from outcomes or step times.
    def observe(self, request_id: str, num_verified: int, num_accepted: int) -> None:
        pass

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        pass

    def should_draft(self, request_id: str) -> bool:
        return True

    def draft_length(self, request_id: str, max_draft: int) -> int:
        return max_draft if self.k is None else min(self.k, max_draft)

    def forget(self, request_id: str) -> None:
        pass

    def stats(self) -> PolicyStats:
        return PolicyStats(verify_length_counts=list(self.lengths.counts))


class VerifyAllPolicy(StaticPolicy):
    """Verify every proposed draft, first come first served within the budget."""

    def __init__(self):
        super().__init__(None)


@register_policy("static", needs_step_cost=False,
                 help="verify a fixed number of drafts (--num-speculative-tokens)")
def _build_static(context: PolicyContext) -> VerifyPolicy:
    return StaticPolicy(context.max_draft)
