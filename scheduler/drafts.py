"""Drafts proposed for one request, awaiting verification (no torch)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DraftBlock:
    """Drafts for one request, awaiting verification.

    `probs` is the draft distribution at each drafted position (the engine's
    [k, V] tensor), or None for a deterministic drafter (one-hot at each
    draft). `confidences[k]` estimates the probability that draft k survives
    given that drafts before it did; by the contract (speculation.md §4) it
    may depend on what precedes position k and on the distribution x_k is
    drawn from, never on the value of x_k itself. `source` names the drafter
    that proposed the block. `calibrated`: the drafter already mapped its
    confidences to survival rates online (the hybrid, per source), so the
    verify policy uses them as they are instead of calibrating them again.
    `peaks`: the largest probability of a trained head's draft distribution
    at each position (known before the draw, like the confidences), kept
    so that evaluation records can fit a calibration that reads it; None
    for drafters without one.
    """

    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    probs: Any = None
    source: str = ""
    calibrated: bool = False
    peaks: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.confidences) != len(self.token_ids):
            raise ValueError(f"{len(self.token_ids)} drafts with {len(self.confidences)} confidences")
        if self.peaks is not None and len(self.peaks) != len(self.token_ids):
            raise ValueError(f"{len(self.token_ids)} drafts with {len(self.peaks)} peaks")

    def __len__(self) -> int:
        return len(self.token_ids)

    def prefix(self, length: int) -> "DraftBlock":
        """The first `length` drafts (what is verified when l = length)."""
        if length >= len(self.token_ids):
            return self
        probs = None if self.probs is None else self.probs[:length]
        peaks = None if self.peaks is None else self.peaks[:length]
        return DraftBlock(self.token_ids[:length], self.confidences[:length], probs, self.source, self.calibrated,
                          peaks)


NO_DRAFTS = DraftBlock()


def expected_accepted(confidences: list[float]) -> float:
    """sum_j prod_{i<=j} c_i: expected accepted drafts of a block whose
    confidences are conditional survival chances."""
    total, survival = 0.0, 1.0
    for c in confidences:
        survival *= c
        total += survival
    return total


@dataclass(frozen=True)
class DraftEconomics:
    """What a draft must be worth at the current load (the verify policy's
    `draft_economics`); every drafter gets it, one that drafts for free
    ignores it.

    `first_draft_threshold`: the survival a request's first draft needs to
    be verified at all. `accepted_token_seconds`: the seconds of drafting
    one accepted draft token is worth: the decode step it saves its
    request, over the users each second of drafting delays (infinite where
    the policy does not weigh load). `verify_token_seconds`: what one more
    verified draft adds to the step (the same users wait for it). A drafter
    may skip drafting expected not to pay, deciding from history, timing and
    load only, never from what it would draw.
    """

    first_draft_threshold: float = 0.0
    accepted_token_seconds: float = math.inf
    verify_token_seconds: float = 0.0


FREE_DRAFTING = DraftEconomics()
