"""Confidence-aware, load-aware verification (speculation.md §4)."""
from __future__ import annotations

from scheduler.admission import (FeltStepCost, StepBase, accepted_token_seconds, admit_from_base, best_budget,
                                 first_draft_threshold, ranked_positions, survivals_from_confidences,
                                 top_k_admission, verify_token_seconds)
from scheduler.calibration import ConfidenceCalibrator
from scheduler.drafts import FREE_DRAFTING, DraftEconomics
from scheduler.load import IDLE, LoadedStepCost, LoadSignal, StepCostModel
from scheduler.policies.base import LengthHistogram, PolicyContext, PolicyStats, VerifyPolicy
from scheduler.policies.registry import register_policy
from scheduler.request import Request

MAX_BACKOFF_STEPS = 16


class AdaptivePolicy(VerifyPolicy):
    """Survivals come from calibrated confidences; the step cost SPS(B) from
    the live cost model. Synchronous mode: greedy admission with the early
    stop. Asynchronous mode: the total budget K is a global search over LAST
    step's survivals, then this step admits the top-K fresh survivals.

    Load-aware rule, in speculation.md §4 terms. The objective counts every
    user on the server, not only the R requests that decode:

        Theta_load = (tau + W) * SPS_felt(B)

    - B = B0 + sum_r l_r, where B0 holds every token already in the step:
      running requests' decode and prefill tokens AND the prefill of the
      requests admitted this step (the scheduler admits before it asks);
      B0_dec of them belong to requests in decode.
    - tau = sum over requests that emit this step (decoders and admissions
      whose prompt completes) of 1 + sum_{j<=l_r} a_{r,j}.
    - W = users present who get no token this step (queued, mid-prefill,
      left out of the budget), plus lambda * T_load(B0): the users expected
      to arrive while the step runs (lambda from recent arrivals), who wait
      for its end. A longer step delays each of them as much as it delays
      a decoder's next token, so each weighs one token in tau: draft (r, j)
      is admitted only while its gain beats (tau + W) times the seconds it
      adds (next point).
    - T_load(B) = T(B) + u * s * B: T the live curve, u the share of the
      machine others hold (NVML other-process utilisation on CUDA, run-queue
      wait on CPU), s the curve's saturated seconds per token. A busy
      machine makes every token cost, so only confident drafts pass.
    - SPS_felt: an accepted draft saves its request one DECODE step,
      T_load(B0_dec + k), while it stretches this step by T_load(B+1) -
      T_load(B) for everyone in it (admissions' first tokens too). So the
      greedy test reads a_{r,j} * T_load(B0_dec + k) > (tau + W) *
      (T_load(B+1) - T_load(B)) (admission.FeltStepCost); with no prefill
      in the step, SPS_felt = SPS_load and, with W = 0 and u = 0, this is
      §4's Theta test exactly.
    - Budget: drafts get only what admissions left. A budget token a
      waiting request can use is worth a whole token of its work, a draft at
      most a_{r,j} <= 1, so the queue always outbids the drafts.
    - Blocks: drafts fit in the KV room (slots in blocks a request holds,
      and the blocks spare beyond one growth block per running request).
      When the cache is fuller than that, or the queue's head waits for
      blocks, or the step preempted, no draft is verified: speculation
      backs off before any preemption is due.

    Non-anticipating: B0, tau0, W, lambda, u, the budget and the KV room
    are fixed (`step_base`) before any survival is read, and the greedy walk with its
    early stop decides position j from positions ranked above it only.
    """

    def __init__(self, cost: StepCostModel, max_batched_tokens: int,
                 calibrator: ConfidenceCalibrator | None = None, asynchronous: bool = False,
                 max_draft: int = 16):
        self.cost = cost
        self.max_batched_tokens = max_batched_tokens
        self.calibrator = calibrator or ConfidenceCalibrator(max_positions=max_draft)
        self.asynchronous = asynchronous
        self.lengths = LengthHistogram(max_draft)
        self.last_length: dict[str, int] = {}
        self._used: dict[str, tuple[list[float], list[float], bool]] = {}  # raw, as read, drafter-calibrated
        self._previous_ranked: list[float] = []
        self.backoff = DraftingBackoff()
        self._latest_base: StepBase | None = None

    def choose_lengths(self, candidates: list[Request], budget_left: int, num_emitting: int = 0,
                       load: LoadSignal = IDLE) -> dict[str, int]:
        base = self.step_base(budget_left, max(num_emitting, len(candidates)), load)
        survivals = {r.request_id: self._survivals(r) for r in candidates}
        if self.asynchronous:
            budget = best_budget(self._previous_ranked, base.tokens, base.tau, base.cost, base.max_extra)
            self._previous_ranked = [a for a, _, _ in ranked_positions(survivals)]
            lengths = top_k_admission(survivals, budget, base.kv)
        else:
            lengths = admit_from_base(survivals, base)
        self.lengths.record(lengths)
        for rid, length in lengths.items():
            self.last_length[rid] = length
            if length == 0:
                self.backoff.failed(rid)
        return lengths

    def observe_load(self, budget_left: int, num_emitting: int, load: LoadSignal) -> None:
        self._latest_base = self.step_base(budget_left, num_emitting, load)

    def draft_economics(self) -> DraftEconomics:
        """From the latest step's base: the next step's load is much the same."""
        base = self._latest_base
        if base is None:
            return FREE_DRAFTING
        return DraftEconomics(first_draft_threshold(base), accepted_token_seconds(base), verify_token_seconds(base))

    def step_base(self, budget_left: int, num_emitting: int, load: LoadSignal) -> StepBase:
        """B0, tau0 + W, the loaded cost, the budget and the KV room: what
        this step's drafts are weighed against, from the load alone."""
        tokens, cost = max(1, self.max_batched_tokens - budget_left), LoadedStepCost(self.cost, load.busy)
        arriving = load.arrival_rate * cost.step_seconds(tokens)
        felt = FeltStepCost(cost, tokens, tokens - load.num_prefill_tokens)
        return StepBase(tokens=tokens, tau=num_emitting + load.num_stalled + arriving, cost=felt,
                        max_extra=budget_left, kv=load.kv)

    def _survivals(self, request: Request) -> list[float]:
        raw = list(request.drafts.confidences)
        # A block its drafter calibrated (the hybrid's head blocks) is not
        # mapped twice: a second map learnt on top of the first shifts the
        # survivals the greedy walk reads until both have converged. Its
        # outcome goes into the calibration report only (observe below), so
        # it does not teach the map that raw blocks are read with.
        flagged = request.drafts.calibrated
        calibrated = raw if flagged else self.calibrator.calibrate(request.request_id, raw)
        self._used[request.request_id] = (raw, calibrated, flagged)
        return survivals_from_confidences(calibrated)

    def observe(self, request_id: str, num_verified: int, num_accepted: int) -> None:
        """Feed back one verification's outcome into the calibration."""
        raw, calibrated, flagged = self._used.pop(request_id, ([], [], False))
        if num_verified and raw:
            self.calibrator.observe(request_id, raw[:num_verified], calibrated[:num_verified], num_accepted,
                                    learn=not flagged)
        if num_accepted:
            self.backoff.paid(request_id)
        elif num_verified:
            self.backoff.failed(request_id)

    def observe_step(self, num_tokens: int, seconds: float) -> None:
        self.cost.observe(num_tokens, seconds)

    def should_draft(self, request_id: str) -> bool:
        return self.backoff.should_draft(request_id)

    def draft_length(self, request_id: str, max_draft: int) -> int:
        """Do not draft what will not be verified: one more than last time."""
        return max(1, min(max_draft, self.last_length.get(request_id, max_draft) + 1))

    def forget(self, request_id: str) -> None:
        self.calibrator.forget(request_id)
        self.last_length.pop(request_id, None)
        self._used.pop(request_id, None)
        self.backoff.forget(request_id)

    def stats(self) -> PolicyStats:
        report = self.calibrator.report()
        return PolicyStats(verify_length_counts=list(self.lengths.counts),
                           calibration_observations=report.observations,
                           calibration_predicted=report.mean_predicted,
                           calibration_realised=report.mean_realised,
                           calibration_error=report.expected_calibration_error,
                           step_cost_table=self.cost.table())


class DraftingBackoff:
    """Skip drafting for 1, 2, 4 .. 16 steps after drafts were not worth
    verifying or were all rejected; reset when a draft is accepted.

    A new request drafts on its first chance but inherits the latest backoff
    level, so one failure pauses it as long as the last failing request was
    paused: a drafter that never pays stays mostly idle across requests too,
    while a short request still gets one try (inheriting the pause itself
    would let short requests finish before it ends, so none would ever draft
    again and nothing could reset the level).
    """

    def __init__(self):
        self._pause: dict[str, tuple[int, int]] = {}  # request -> (steps left to skip, backoff)
        self._recent = 0

    def failed(self, request_id: str) -> None:
        _, backoff = self._pause.get(request_id, (0, 0))
        backoff = min(MAX_BACKOFF_STEPS, max(1, 2 * backoff))
        self._pause[request_id] = (backoff, backoff)
        self._recent = backoff

    def paid(self, request_id: str) -> None:
        self._pause[request_id] = (0, 0)
        self._recent = 0

    def should_draft(self, request_id: str) -> bool:
        if request_id not in self._pause:
            self._pause[request_id] = (0, self._recent)
        skip, backoff = self._pause[request_id]
        if skip <= 0:
            return True
        self._pause[request_id] = (skip - 1, backoff)
        return False

    def forget(self, request_id: str) -> None:
        self._pause.pop(request_id, None)


@register_policy("adaptive", needs_step_cost=True,
                 help="verify what pays given live load and calibrated confidences (greedy admission)")
def _build_adaptive(context: PolicyContext) -> VerifyPolicy:
    return AdaptivePolicy(context.step_cost, context.max_batched_tokens, max_draft=context.max_draft)


@register_policy("adaptive-async", needs_step_cost=True,
                 help="budget from last step's confidences, top-K fresh survivals admitted")
def _build_adaptive_async(context: PolicyContext) -> VerifyPolicy:
    return AdaptivePolicy(context.step_cost, context.max_batched_tokens, asynchronous=True,
                          max_draft=context.max_draft)
