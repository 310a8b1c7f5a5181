"""A verification policy that verifies each request's drafts while the
drafter is confident enough: the longest prefix whose confidences are all
at least a threshold, within the step's budget.

Adding it to specserve: save this file as scheduler/policies/threshold.py
and add `threshold` to the import line of scheduler/policies/__init__.py.
Then `specserve serve --verify-policy threshold` uses it.
"""
from __future__ import annotations

from scheduler.load import IDLE, LoadSignal
from scheduler.policies.base import LengthHistogram, PolicyContext, PolicyStats, VerifyPolicy
from scheduler.policies.registry import register_policy
from scheduler.request import Request


class ThresholdPolicy(VerifyPolicy):
    """Verify drafts up to the first one whose confidence is below
    `threshold`. Lossless: whether draft k is verified depends only on the
    confidences of drafts 0..k, and a confidence never depends on the value
    of its own draft (speculation.md §4)."""

    def __init__(self, threshold: float, max_draft: int):
        self.threshold = threshold
        self.max_draft = max_draft
        self.lengths = LengthHistogram(max_draft)

    def choose_lengths(self, candidates: list[Request], budget_left: int, num_emitting: int = 0,
                       load: LoadSignal = IDLE) -> dict[str, int]:
        lengths = {}
        for request in candidates:  # packed order: first come, first served
            confident = 0
            while confident < len(request.drafts) and request.drafts.confidences[confident] >= self.threshold:
                confident += 1
            lengths[request.request_id] = length = min(confident, budget_left)
            budget_left -= length
        self.lengths.record(lengths)
        return lengths

    def draft_length(self, request_id: str, max_draft: int) -> int:
        return min(self.max_draft, max_draft)

    def should_draft(self, request_id: str) -> bool:
        return True

    # Nothing is learnt from outcomes, step times or departures.
    def observe(self, request_id: str, num_verified: int, num_accepted: int) -> None:
        pass

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        pass

    def forget(self, request_id: str) -> None:
        pass

    def stats(self) -> PolicyStats:
        return PolicyStats(verify_length_counts=list(self.lengths.counts))


@register_policy("threshold", needs_step_cost=False,
                 help="verify drafts while their confidence is at least 0.3")
def build_threshold(context: PolicyContext) -> VerifyPolicy:
    return ThresholdPolicy(threshold=0.3, max_draft=context.max_draft)
