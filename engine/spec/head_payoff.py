"""What the hybrid knows of its head from past steps (engine/spec/hybrid.py's
module doc): conditional acceptance per draft position, what a run has
cost and gained per band of n-gram's expectation, and how many drafts the
policy verified of recent head blocks. History, timing and load only:
pre-draw information."""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from scheduler.drafts import DraftBlock, DraftEconomics, expected_accepted


@dataclass
class PositionRates:
    """Historical conditional acceptance per draft position (Beta mean with
    a weak prior at `prior_mean`)."""

    prior_mean: float = 0.5
    prior_strength: float = 2.0
    trials: list[float] = field(default_factory=list)
    accepted: list[float] = field(default_factory=list)

    def rate(self, position: int) -> float:
        if position >= len(self.trials):
            return self.prior_mean
        return (self.accepted[position] + self.prior_mean * self.prior_strength) / \
            (self.trials[position] + self.prior_strength)

    def observe(self, num_verified: int, num_accepted: int) -> None:
        """Positions 0..num_accepted-1 survived; position num_accepted (if
        verified) was rejected; later ones were not reached."""
        for position in range(min(num_verified, num_accepted + 1)):
            while len(self.trials) <= position:
                self.trials.append(0.0)
                self.accepted.append(0.0)
            self.trials[position] += 1.0
            self.accepted[position] += 1.0 if position < num_accepted else 0.0


# Bands of the expected accepted drafts of n-gram's block on offer (its
# calibrated confidences; 0 with no block) with a payoff of their own.
PAYOFF_BUCKET_EDGES = (0.25, 0.5, 1.0)


@dataclass
class HeadPayoff:
    """What running the head for one request has cost (seconds, measured;
    drafts of its blocks verified) and gained: the drafts its chosen blocks
    got accepted beyond what the n-gram blocks they displaced were expected
    to get (the choice's own calibrated figure; a run whose block was not
    chosen gains nothing). As sums decayed by `keep` per proposal batch.
    Starts optimistic (one draft gained per run, no cost known), so the
    head is tried."""

    keep: float = 0.98
    runs: float = 1.0
    gained: float = 1.0
    verified: float = 0.0
    seconds: float = 0.0
    timed_runs: float = 0.0

    def record_runs(self, num_runs: int, seconds: float) -> None:
        self.runs = self.runs * self.keep + num_runs
        self.gained *= self.keep
        self.verified *= self.keep
        self.seconds = self.seconds * self.keep + seconds
        self.timed_runs = self.timed_runs * self.keep + num_runs

    def record_outcome(self, num_verified: int, num_accepted: int, displaced: float = 0.0) -> None:
        """A chosen head block was verified; `displaced`: the expected
        accepted drafts of the n-gram block it was chosen over (0: none)."""
        self.verified += num_verified
        self.gained += num_accepted - displaced

    @property
    def gained_per_run(self) -> float:
        return self.gained / self.runs

    @property
    def verified_per_run(self) -> float:
        return self.verified / self.runs

    @property
    def seconds_per_run(self) -> float:
        return self.seconds / self.timed_runs if self.timed_runs else 0.0

    def pays(self, economics: DraftEconomics, steps_saved_per_token: float = 1.0) -> bool:
        """Whether a run is worth what it costs; `steps_saved_per_token`: the
        share of a step one more accepted draft saves the request (module doc)."""
        cost = self.seconds_per_run + self.verified_per_run * economics.verify_token_seconds
        return self.gained_per_run * economics.accepted_token_seconds * steps_saved_per_token >= cost


class HeadLengths:
    """How many drafts the policy verified of the head's last `window`
    blocks; the head drafts at most one more than the largest (module doc)."""

    def __init__(self, window: int = 16):
        self.recent: deque[int] = deque(maxlen=window)

    def observe(self, num_verified: int) -> None:
        self.recent.append(num_verified)

    def cap(self, longest: int) -> int:
        """Drafts worth asking the head for, of at most `longest`."""
        if not self.recent:
            return longest
        return max(1, min(longest, max(self.recent) + 1))


def ngram_expectation(block: DraftBlock | None) -> float:
    """Expected accepted drafts of n-gram's block on offer; 0 with none."""
    return expected_accepted(block.confidences) if block is not None else 0.0


def head_expectation(first_confidence: float, rates: PositionRates, max_tokens: int) -> float:
    """c_1 * (1 + sum_{j>=2} prod_{2<=i<=j} s_i): the head's expected
    accepted drafts from its first confidence and its history alone."""
    return first_confidence * (1.0 + expected_accepted([rates.rate(i) for i in range(1, max_tokens)]))
