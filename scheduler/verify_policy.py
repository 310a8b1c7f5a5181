"""How many of each request's proposed drafts the target verifies this step."""
from __future__ import annotations

from scheduler.admission import (best_budget, greedy_prefix_admission, ranked_positions,
                                 survivals_from_confidences, top_k_admission)
from scheduler.calibration import ConfidenceCalibrator
from scheduler.load import StepCostModel
from scheduler.request import Request


class VerifyPolicy:
    """Chooses per-request verification lengths for one step.

    Contract of `choose_lengths(candidates, budget_left, num_emitting)`:
    - `candidates`: running requests in decode (their only real token this
      step is the last sampled one) that hold drafts in
      `request.spec_token_ids`, with confidences in
      `request.spec_confidences`; listed in packed-batch order.
    - `budget_left`: how many draft tokens the step can still take in total.
    - `num_emitting`: requests in this step that will emit a token whatever
      is verified (every sampling request, candidates included).
    - returns `{request_id: l}` with `0 <= l <= len(spec_token_ids)` and the
      sum of all `l` at most `budget_left`; a missing id means `l = 0`.
      Each request verifies its first `l` drafts (a prefix).
    - losslessness: whether draft position k is verified must not depend on
      the value of draft token k itself (see design/speculation.md section 4),
      only on earlier tokens' confidences, load and budget.
    The scheduler clamps the answer to these bounds again, so a policy bug
    costs speed, never correctness of the bookkeeping.
    """

    def choose_lengths(self, candidates: list[Request], budget_left: int,
                       num_emitting: int = 0) -> dict[str, int]:
        raise NotImplementedError


class StaticPolicy(VerifyPolicy):
    """Verify a fixed number k of drafts (fewer when fewer were proposed, or
    the budget runs out), first come first served; k=None verifies all."""

    def __init__(self, k: int | None):
        self.k = k

    def choose_lengths(self, candidates: list[Request], budget_left: int,
                       num_emitting: int = 0) -> dict[str, int]:
        lengths = {}
        for request in candidates:
            proposed = len(request.spec_token_ids)
            wanted = proposed if self.k is None else min(self.k, proposed)
            lengths[request.request_id] = length = max(0, min(wanted, budget_left))
            budget_left -= length
        return lengths


class VerifyAllPolicy(StaticPolicy):
    """Verify every proposed draft, first come first served within the budget."""

    def __init__(self):
        super().__init__(None)


class AdaptivePolicy(VerifyPolicy):
    """Confidence-aware, load-aware verification (speculation.md §4).

    Survivals come from calibrated confidences; the step cost SPS(B) from the
    live cost model. Synchronous mode: greedy admission with the early stop.
    Asynchronous mode: the total budget K is a global search over LAST
    step's survivals, then this step admits the top-K fresh survivals.

    The batch's base comes from the scheduler's plan: B0 = tokens of the
    running requests already planned this step, tau0 = one emitted token per
    sampling request.
    """

    def __init__(self, cost: StepCostModel, max_batched_tokens: int,
                 calibrator: ConfidenceCalibrator | None = None, asynchronous: bool = False,
                 max_draft: int = 16):
        self.cost = cost
        self.max_batched_tokens = max_batched_tokens
        self.calibrator = calibrator or ConfidenceCalibrator(max_positions=max_draft)
        self.asynchronous = asynchronous
        self.length_counts = [0] * (max_draft + 1)  # chosen verification lengths
        self.last_length: dict[str, int] = {}
        self._used: dict[str, tuple[list[float], list[float]]] = {}
        self._previous_ranked: list[float] = []
        # Drafting backoff per request: (steps left to skip, current backoff);
        # a new request starts from the latest backoff of any request, so a
        # drafter that never pays stays mostly idle across requests too.
        self._pause: dict[str, tuple[int, int]] = {}
        self._recent_backoff = 0

    def choose_lengths(self, candidates: list[Request], budget_left: int,
                       num_emitting: int = 0) -> dict[str, int]:
        survivals = {r.request_id: self._survivals(r) for r in candidates}
        base_tokens = max(1, self.max_batched_tokens - budget_left)
        base_tau = float(max(num_emitting, len(candidates)))
        if self.asynchronous:
            budget = best_budget(self._previous_ranked, base_tokens, base_tau, self.cost, budget_left)
            self._previous_ranked = [a for a, _, _ in ranked_positions(survivals)]
            lengths = top_k_admission(survivals, budget)
        else:
            lengths = greedy_prefix_admission(survivals, base_tokens, base_tau, self.cost, budget_left)
        for rid, length in lengths.items():
            self.length_counts[min(length, len(self.length_counts) - 1)] += 1
            self.last_length[rid] = length
            if length == 0:
                self._back_off(rid)
        return lengths

    def _survivals(self, request: Request) -> list[float]:
        num = len(request.spec_token_ids)
        # A drafter without an opinion gets a neutral prior the calibrator corrects.
        raw = (list(request.spec_confidences) + [0.5] * num)[:num]
        calibrated = self.calibrator.calibrate(request.request_id, raw)
        self._used[request.request_id] = (raw, calibrated)
        return survivals_from_confidences(calibrated)

    def observe(self, request_id: str, num_verified: int, num_accepted: int) -> None:
        """Feed back one verification's outcome into the calibration."""
        raw, calibrated = self._used.pop(request_id, ([], []))
        if num_verified and raw:
            self.calibrator.observe(request_id, raw[:num_verified], calibrated[:num_verified], num_accepted)
        if num_accepted:
            self._pause[request_id] = (0, 0)
            self._recent_backoff = 0
        elif num_verified:
            self._back_off(request_id)

    def _back_off(self, request_id: str) -> None:
        """Drafts were not worth verifying, or all were rejected: skip
        drafting for this request for 1, 2, 4 .. 16 steps."""
        _, backoff = self._pause.get(request_id, (0, 0))
        backoff = min(16, max(1, 2 * backoff))
        self._pause[request_id] = (backoff, backoff)
        self._recent_backoff = backoff

    def should_draft(self, request_id: str) -> bool:
        """False while the request is in a drafting backoff (for drafters whose
        drafting costs compute; a skipped step decodes plainly)."""
        if request_id not in self._pause:
            self._pause[request_id] = (self._recent_backoff, self._recent_backoff)
        skip, backoff = self._pause[request_id]
        if skip <= 0:
            return True
        self._pause[request_id] = (skip - 1, backoff)
        return False

    def draft_length(self, request_id: str, max_draft: int) -> int:
        """Do not draft what will not be verified: one more than last time."""
        return max(1, min(max_draft, self.last_length.get(request_id, max_draft) + 1))

    def forget(self, request_id: str) -> None:
        self.calibrator.forget(request_id)
        self.last_length.pop(request_id, None)
        self._used.pop(request_id, None)
        self._pause.pop(request_id, None)
