"""How many of each request's proposed drafts the target verifies this step."""
from __future__ import annotations

from scheduler.request import Request


class VerifyPolicy:
    """Chooses per-request verification lengths for one step.

    Contract of `choose_lengths(candidates, budget_left)`:
    - `candidates`: running requests in decode (their only real token this
      step is the last sampled one) that hold drafts in
      `request.spec_token_ids`, with confidences in
      `request.spec_confidences`; listed in packed-batch order.
    - `budget_left`: how many draft tokens the step can still take in total.
    - returns `{request_id: l}` with `0 <= l <= len(spec_token_ids)` and the
      sum of all `l` at most `budget_left`; a missing id means `l = 0`.
      Each request verifies its first `l` drafts (a prefix).
    - losslessness: whether draft position k is verified must not depend on
      the value of draft token k itself (see design/speculation.md section 4),
      only on earlier tokens' confidences, load and budget.
    The scheduler clamps the answer to these bounds again, so a policy bug
    costs speed, never correctness of the bookkeeping.
    """

    def choose_lengths(self, candidates: list[Request], budget_left: int) -> dict[str, int]:
        raise NotImplementedError


class VerifyAllPolicy(VerifyPolicy):
    """Verify every proposed draft, first come first served within the budget."""

    def choose_lengths(self, candidates: list[Request], budget_left: int) -> dict[str, int]:
        lengths = {}
        for request in candidates:
            length = min(len(request.spec_token_ids), budget_left)
            lengths[request.request_id] = length
            budget_left -= length
        return lengths
