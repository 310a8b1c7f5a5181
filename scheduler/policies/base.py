"""The verification-policy interface and what every policy reports."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from scheduler.drafts import FREE_DRAFTING, DraftEconomics
from scheduler.load import IDLE, LoadSignal, StepCostModel
from scheduler.request import Request


@dataclass
class PolicyStats:
    """What a policy exposes to /metrics; fields a policy lacks stay empty."""

    verify_length_counts: list[int] = field(default_factory=list)  # index = chosen length
    calibration_observations: int = 0
    calibration_predicted: float = 0.0  # mean predicted survival of verified drafts
    calibration_realised: float = 0.0  # their realised acceptance rate
    calibration_error: float = 0.0  # expected calibration error
    step_cost_table: list[tuple[int, float]] = field(default_factory=list)  # (B, SPS)


@dataclass(frozen=True)
class PolicyContext:
    """What a policy may be built from (see scheduler.policies.registry)."""

    max_draft: int  # --num-speculative-tokens: the most drafts per request and step
    max_batched_tokens: int
    step_cost: StepCostModel | None = None  # profiled SPS(B), for load-aware policies


class VerifyPolicy(ABC):
    """Decides how many drafts each request drafts and verifies.

    The scheduler calls, per step: `should_draft` / `draft_length` before a
    request drafts (only for drafters whose drafting costs compute),
    `choose_lengths` when it plans the step, `observe_load` with every
    step's load (drafts or not), `observe` with each verification's
    outcome, `observe_step` with the measured step time, and `forget` when
    a request leaves for good. Costly drafters read `draft_economics`. The engine never asks which
    policy it holds.

    Contract of `choose_lengths(candidates, budget_left, num_emitting, load)`:
    - `candidates`: running requests in decode (their only real token this
      step is the last sampled one) holding drafts in `request.drafts`,
      in packed-batch order.
    - `budget_left`: how many draft tokens the step can still take in total
      (the scheduler has already admitted waiting requests with the rest).
    - `num_emitting`: requests in this step that emit a token whatever is
      verified (every sampling request, candidates and admissions included).
    - `load`: the rest of what the scheduler knows (scheduler.load.LoadSignal:
      users left waiting, the KV room drafts may use, the machine counters).
    - returns `{request_id: l}` with `0 <= l <= len(request.drafts)` and the
      sum of all `l` at most `budget_left`; a missing id means `l = 0`. Each
      request verifies its first `l` drafts (a prefix).
    - losslessness: whether draft position k is verified must not depend on
      the value of draft token k itself (speculation.md §4), only on
      confidences of earlier positions, load and budget.
    The scheduler clamps the answer to these bounds and to `load.kv` again,
    in packed order, so a policy bug costs speed, never correctness of the
    bookkeeping nor a preemption. (A policy that already respects `load.kv`
    is never clamped: its own order of decisions stands.)
    """

    @abstractmethod
    def choose_lengths(self, candidates: list[Request], budget_left: int, num_emitting: int = 0,
                       load: LoadSignal = IDLE) -> dict[str, int]:
        """Verification length per candidate (see the class docstring)."""

    @abstractmethod
    def observe(self, request_id: str, num_verified: int, num_accepted: int) -> None:
        """One verification's outcome: `num_accepted` of `num_verified` survived."""

    @abstractmethod
    def observe_step(self, num_tokens: int, seconds: float) -> None:
        """A whole engine step (drafting included) over `num_tokens` query tokens."""

    def observe_load(self, budget_left: int, num_emitting: int, load: LoadSignal) -> None:
        """Every step's load, whether or not anything is verified (what
        `draft_economics` reads). A policy blind to load ignores it."""

    def draft_economics(self) -> DraftEconomics:
        """What a draft must be worth at the latest step's load
        (scheduler.drafts.DraftEconomics). A policy that verifies whatever
        is drafted asks nothing of it."""
        return FREE_DRAFTING

    @abstractmethod
    def should_draft(self, request_id: str) -> bool:
        """Whether the request drafts for its next step."""

    @abstractmethod
    def draft_length(self, request_id: str, max_draft: int) -> int:
        """How many drafts (at most `max_draft`) the request drafts next."""

    @abstractmethod
    def forget(self, request_id: str) -> None:
        """The request is gone for good: drop what is kept for it."""

    @abstractmethod
    def stats(self) -> PolicyStats:
        """Counters and gauges for /metrics."""


class LengthHistogram:
    """How often each verification length was chosen."""

    def __init__(self, max_length: int):
        self.counts = [0] * (max_length + 1)

    def record(self, lengths: dict[str, int]) -> None:
        for length in lengths.values():
            self.counts[min(length, len(self.counts) - 1)] += 1
