"""Drafts proposed for one request, awaiting verification (no torch)."""
from __future__ import annotations

import dataclasses
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
    `alternatives`: other deterministic blocks for the same positions, none
    longer than this one, each starting with a token no other block starts
    with (a token tree of branches from the anchor). Only for greedy and
    seeded requests: the runner verifies every branch and keeps the one
    with the longest accepted prefix, exactly what plain decoding emits
    (engine/spec/tree.py).
    """

    token_ids: list[int] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    probs: Any = None
    source: str = ""
    calibrated: bool = False
    peaks: list[float] | None = None
    alternatives: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if len(self.confidences) != len(self.token_ids):
            raise ValueError(f"{len(self.token_ids)} drafts with {len(self.confidences)} confidences")
        if self.peaks is not None and len(self.peaks) != len(self.token_ids):
            raise ValueError(f"{len(self.token_ids)} drafts with {len(self.peaks)} peaks")
        if self.alternatives:
            self._check_alternatives()

    def _check_alternatives(self) -> None:
        if self.probs is not None or not self.token_ids:
            raise ValueError("alternatives go with a deterministic block of drafts")
        firsts = [self.token_ids[0]] + [branch[0] if branch else None for branch in self.alternatives]
        if None in firsts or len(set(firsts)) != len(firsts):
            raise ValueError("each alternative is non-empty and starts with a token no other block starts with")
        if max(map(len, self.alternatives)) > len(self.token_ids):
            # The KV slots a step reserves are the main block's.
            raise ValueError("an alternative is longer than the block of drafts")

    def __len__(self) -> int:
        return len(self.token_ids)

    def prefix(self, length: int) -> "DraftBlock":
        """The first `length` drafts (what is verified when l = length)."""
        if length >= len(self.token_ids):
            return self
        probs = None if self.probs is None else self.probs[:length]
        peaks = None if self.peaks is None else self.peaks[:length]
        return DraftBlock(self.token_ids[:length], self.confidences[:length], probs, self.source, self.calibrated,
                          peaks, tuple(branch[:length] for branch in self.alternatives) if length > 0 else ())

    @property
    def num_alternative_rows(self) -> int:
        """Rows the alternatives add to a step: each repeats the anchor."""
        return sum(1 + len(branch) for branch in self.alternatives)

    def within_alternative_rows(self, rows: int) -> "DraftBlock":
        """The block with only the alternatives that fit in `rows` extra rows
        (the last one cut short if it has at least one draft left)."""
        kept, left = [], rows
        for branch in self.alternatives:
            if left < 2:
                break
            kept.append(branch[: left - 1])
            left -= 1 + len(kept[-1])
        if len(kept) == len(self.alternatives) and all(map(tuple.__eq__, kept, self.alternatives)):
            return self
        return dataclasses.replace(self, alternatives=tuple(kept))


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
