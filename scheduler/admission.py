"""Choosing how many drafted tokens to verify: pure functions over survivals.

`survivals[r]` lists a_{r,1..k} = prod_{i<=j} c_{r,i}, the calibrated
probability that draft j of request r survives verification. Verifying one
more token adds 1 to the batch (B) and a_{r,j} to the expected emitted
tokens (tau). The objective is Theta = tau * SPS(B) (speculation.md §4);
the load-aware base (B0, tau0, the loaded cost, the KV room) comes from
`StepBase` (see `AdaptivePolicy` for the rule).

A draft that would need KV the step cannot spare closes its request: the
request's later drafts are skipped, the walk goes on with other requests.
That stays non-anticipating: whether (r, j) is admitted still depends only
on the positions ranked above it, none of which depends on draft x_{r,j}.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from scheduler.load import KvRoom, KvTally


class StepCost(Protocol):
    """What admission reads of a step-cost model: steps per second at B tokens."""

    def sps(self, num_tokens: int) -> float: ...


class SecondsCost(Protocol):
    """A step-cost model in seconds (StepCostModel, LoadedStepCost)."""

    def step_seconds(self, num_tokens: int) -> float: ...


class FeltStepCost:
    """SPS as the step's decoders feel it when the step also carries prefill.

    An accepted draft saves its request one decode step, T(B0_dec + k) (k
    drafts admitted so far); the draft stretches THIS step, for everyone in
    it, by T(B0 + k + 1) - T(B0 + k). The felt step time starts at the
    decode step's and grows by that stretch relative to a decode step:

        T_felt(k + 1) = T_felt(k) * (1 + (T(B0+k+1) - T(B0+k)) / T(B0_dec+k))

    so Theta's greedy test on tau / T_felt admits draft (r, j) iff
    a_{r,j} * T(B0_dec + k) > tau * (T(B0+k+1) - T(B0+k)). Without prefill
    (B0_dec = B0) the product telescopes: T_felt(k) = T(B0 + k), plain SPS.
    A long prefill step makes an extra token look cheap next to the step,
    but it delays every user in it (the admitted ones' first tokens too) by
    the same seconds for a gain worth one short decode step.
    """

    def __init__(self, cost: SecondsCost, base_tokens: int, decode_tokens: int):
        self.cost = cost
        self.base_tokens = base_tokens
        self.decode_tokens = max(1, min(decode_tokens, base_tokens))
        self._felt = [cost.step_seconds(self.decode_tokens)]  # T_felt(0), T_felt(1), ...

    def step_seconds(self, num_tokens: int) -> float:
        extra = max(0, num_tokens - self.base_tokens)
        while len(self._felt) <= extra:
            k = len(self._felt) - 1
            stretch = self.cost.step_seconds(self.base_tokens + k + 1) - self.cost.step_seconds(self.base_tokens + k)
            self._felt.append(self._felt[k] * (1 + stretch / self.cost.step_seconds(self.decode_tokens + k)))
        return self._felt[extra]

    def sps(self, num_tokens: int) -> float:
        return 1.0 / self.step_seconds(num_tokens)


@dataclass(frozen=True)
class StepBase:
    """Everything one step's drafts are weighed against: the batch before
    drafts (B0 tokens, tau0), the cost, the budget and the KV room. It is
    built from the load alone, before any survival is read."""

    tokens: int
    tau: float
    cost: StepCost
    max_extra: int
    kv: KvRoom = field(default_factory=KvRoom)


def ranked_positions(survivals: dict[str, list[float]]) -> list[tuple[float, int, str]]:
    """All (a, j, r) by descending survival; ties keep a request's earlier
    position first, so each request's admitted positions form a prefix."""
    items = [(a, j, rid) for rid, seq in survivals.items() for j, a in enumerate(seq, start=1)]
    items.sort(key=lambda t: (-t[0], t[1]))
    return items


def greedy_prefix_admission(survivals: dict[str, list[float]], base_tokens: int, base_tau: float,
                            cost: StepCost, max_extra: int, kv: KvRoom | None = None) -> dict[str, int]:
    """Admit positions in survival order while Theta improves; STOP at the
    first that does not. A position that does not fit in `kv` closes its
    request (see the module docstring).

    The early stop keeps verification non-anticipating: whether position j of
    a request is verified is decided before any survival that depends on
    draft token x_j (a_{r,j+1} <= a_{r,j} ranks later) is looked at.
    """
    lengths = dict.fromkeys(survivals, 0)
    tokens, tau = base_tokens, base_tau
    best = tau * cost.sps(tokens)
    for a, j, rid in _fitting_positions(survivals, max_extra, kv):
        theta = (tau + a) * cost.sps(tokens + 1)
        if theta <= best:
            break
        tokens, tau, best = tokens + 1, tau + a, theta
        lengths[rid] = j
    return lengths


def first_draft_threshold(base: StepBase) -> float:
    """The least survival a lone first draft needs to be admitted against
    `base`: (tau + a) * SPS(B0 + 1) > tau * SPS(B0), i.e. a > tau *
    (SPS(B0) / SPS(B0 + 1) - 1). Infinite when no draft fits the budget."""
    if base.max_extra <= 0:
        return math.inf
    return base.tau * (base.cost.sps(base.tokens) / base.cost.sps(base.tokens + 1) - 1.0)


def accepted_token_seconds(base: StepBase) -> float:
    """Seconds of drafting an accepted draft token is worth against `base`:
    the decode step it saves its request, T_load(B0_dec), over the users each
    second of drafting delays, tau0 + W."""
    return base.cost.step_seconds(base.tokens) / max(base.tau, 1.0)


def verify_token_seconds(base: StepBase) -> float:
    """Seconds one more verified token adds to the step against `base`, as
    its users feel it: T_load(B0 + 1) - T_load(B0)."""
    return base.cost.step_seconds(base.tokens + 1) - base.cost.step_seconds(base.tokens)


def _fitting_positions(survivals: dict[str, list[float]], max_extra: int, kv: KvRoom | None):
    """Ranked positions that fit the KV room, at most `max_extra` of them;
    a position that does not fit closes its request. The caller may stop
    early: blocks are counted as positions are handed out."""
    tally, closed, handed = KvTally(kv or KvRoom()), set(), 0
    for a, j, rid in ranked_positions(survivals):
        if handed >= max_extra:
            return
        if rid in closed or not tally.admit(rid, j):
            closed.add(rid)
            continue
        handed += 1
        yield a, j, rid


def admit_from_base(survivals: dict[str, list[float]], base: StepBase) -> dict[str, int]:
    """Greedy prefix admission against a load-aware base."""
    return greedy_prefix_admission(survivals, base.tokens, base.tau, base.cost, base.max_extra, base.kv)


def best_budget(ranked_values: list[float], base_tokens: int, base_tau: float,
                cost: StepCost, max_extra: int) -> int:
    """Global search: the number K of top-ranked positions maximising Theta.

    Looks past local dips of a jagged SPS curve, so it may only be fed
    survivals that are at least one step old (see `top_k_admission`).
    """
    best_k, tau = 0, base_tau
    best = tau * cost.sps(base_tokens)
    for k, a in enumerate(ranked_values[:max(0, max_extra)], start=1):
        tau += a
        theta = tau * cost.sps(base_tokens + k)
        if theta > best:
            best_k, best = k, theta
    return best_k


def top_k_admission(survivals: dict[str, list[float]], budget: int,
                    kv: KvRoom | None = None) -> dict[str, int]:
    """Admit the `budget` highest fresh survivals that fit in `kv` (the
    asynchronous variant: `budget` was fixed from last step's survivals,
    before these drafts existed)."""
    lengths = dict.fromkeys(survivals, 0)
    for _, j, rid in _fitting_positions(survivals, budget, kv):
        lengths[rid] = j
    return lengths


def global_search_admission(survivals: dict[str, list[float]], base_tokens: int, base_tau: float,
                            cost: StepCost, max_extra: int) -> dict[str, int]:
    """Global search over FRESH survivals. Biased (anticipating): kept only as
    the counterexample the tests show failing; never used for serving."""
    ranked = ranked_positions(survivals)
    k = best_budget([a for a, _, _ in ranked], base_tokens, base_tau, cost, max_extra)
    return top_k_admission(survivals, k)


def survivals_from_confidences(confidences: list[float]) -> list[float]:
    """a_j = prod_{i<=j} c_i."""
    out, acc = [], 1.0
    for c in confidences:
        acc *= min(1.0, max(0.0, c))
        out.append(acc)
    return out
