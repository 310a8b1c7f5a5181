"""The contract's counterexamples (speculation.md §4): verification must not
depend on the value of the draft being verified.

1. Global search over fresh survivals. Target (0.7, 0.3) at the first
   position, draft (0.5, 0.5), c_1 = 0.8 and c_2 = 1 if x_1 == 0 else 0,
   SPS(1..3) = 1.0, 0.5, 0.45: global search verifies x_1 only when x_1 = 0
   and gives P(first token = 0) = 0.85. Greedy admission with the early stop
   keeps 0.7; under the cost SPS(1..3) = 1.0, 0.6, 0.45 it verifies x_1
   always and x_2 when x_1 = 0 (checked, so the case is not vacuous).
2. A confidence of the drawn token (the bug of issue 10). Target (0.7, 0.3),
   draft (0.8, 0.2), SPS(1..2) = 1.0, 0.6: with c_1 = q(x_1), greedy
   admission verifies x_1 only when x_1 = 0 and gives P(0) = 0.84; with
   c_1 = max q = 0.8 (the rule: the peak of the distribution x_1 is drawn
   from) it verifies x_1 always and keeps 0.7.
"""
from __future__ import annotations

import math
from collections import Counter

import torch

from engine.spec.rejection import rejection_sample
from scheduler.admission import (global_search_admission, greedy_prefix_admission,
                                 survivals_from_confidences, top_k_admission, best_budget)
from scheduler.load import DeviceCounters, KvRoom, LoadSignal, StepCostModel
from scheduler.policies import AdaptivePolicy

TARGET = torch.tensor([0.7, 0.3])
TRIALS = 20000
# SPS(1..3) = 1.0, 0.5, 0.45: verifying x_1 alone never pays, x_1 and x_2 together may.
GLOBAL_COUNTEREXAMPLE_COST = StepCostModel([1, 2, 3], [1.0, 2.0, 1 / 0.45])
# SPS(1..3) = 1.0, 0.6, 0.45: verifying x_1 at survival 0.8 pays (1.8 * 0.6 > 1).
PAYING_COST = StepCostModel([1, 2, 3], [1.0, 1 / 0.6, 1 / 0.45])


def confidences_depending_on_the_next_token(x, q):
    """c_1 fixed; c_2 depends on x_1 (allowed: it precedes position 2)."""
    return [0.8, 1.0 if x[0] == 0 else 0.0]


def confidence_of_the_drawn_token(x, q):
    """c_k = q(x_k): forbidden."""
    return [float(q[x[0]]), float(q[x[1]])]


def peak_confidence(x, q):
    """c_k = max q: allowed."""
    return [float(q.max())] * 2


def first_token_frequency(policy, cost, draft, confidence, seed: int = 0) -> tuple[float, Counter]:
    """P(first emitted token = 0) over TRIALS, and how often each length was verified."""
    gen = torch.Generator().manual_seed(seed)
    drafts = torch.multinomial(draft, 2 * TRIALS, replacement=True, generator=gen).reshape(TRIALS, 2)
    lengths = [policy({"r": survivals_from_confidences(confidence(x, draft))}, 1, 1.0, cost, 2)["r"]
               for x in drafts.tolist()]
    # Positions past the first have a point-mass target so only x_1 matters.
    rows = torch.stack([TARGET, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])])
    verified = torch.cat([drafts[i, :n] for i, n in enumerate(lengths)])
    result = rejection_sample(verified, draft.repeat(verified.shape[0], 1),
                              torch.cat([rows[: n + 1] for n in lengths]), lengths, [gen] * TRIALS)
    zeros = sum(tokens[0] == 0 for tokens in result.emitted_token_ids)
    return zeros / TRIALS, Counter(lengths)


def within(p_hat: float, p: float, sigmas: float = 5.0) -> bool:
    return abs(p_hat - p) <= sigmas * math.sqrt(p * (1 - p) / TRIALS)


UNIFORM_DRAFT = torch.tensor([0.5, 0.5])
PEAKED_DRAFT = torch.tensor([0.8, 0.2])


def test_greedy_admission_keeps_the_target_distribution():
    freq, lengths = first_token_frequency(greedy_prefix_admission, PAYING_COST, UNIFORM_DRAFT,
                                          confidences_depending_on_the_next_token)
    assert lengths[0] == 0 and lengths[1] > 0 and lengths[2] > 0  # it speculates, at two lengths
    assert within(freq, 0.7)


def test_global_search_on_fresh_confidences_is_biased():
    freq, lengths = first_token_frequency(global_search_admission, GLOBAL_COUNTEREXAMPLE_COST, UNIFORM_DRAFT,
                                          confidences_depending_on_the_next_token)
    assert lengths[0] > 0 and lengths[2] > 0
    assert within(freq, 0.85)
    assert not within(freq, 0.7)


def test_a_confidence_of_the_drawn_token_is_biased_and_the_peak_is_not():
    freq, lengths = first_token_frequency(greedy_prefix_admission, PAYING_COST, PEAKED_DRAFT,
                                          confidence_of_the_drawn_token)
    assert lengths[0] > 0 and lengths[1] + lengths[2] > 0
    assert within(freq, 0.84) and not within(freq, 0.7)
    freq, lengths = first_token_frequency(greedy_prefix_admission, PAYING_COST, PEAKED_DRAFT, peak_confidence)
    assert lengths[0] == 0
    assert within(freq, 0.7)


def test_flat_cost_verifies_long_prefixes_steep_cost_only_confident_ones():
    survivals = {"a": survivals_from_confidences([0.9, 0.9, 0.9, 0.9]),
                 "b": survivals_from_confidences([0.3, 0.3, 0.3, 0.3])}
    flat = greedy_prefix_admission(survivals, 2, 2.0, StepCostModel.flat(), 8)
    assert flat == {"a": 4, "b": 4}
    # Each extra token costs 30% of a step: only survivals above ~0.3-0.4 pay.
    steep = greedy_prefix_admission(survivals, 2, 2.0, StepCostModel.linear(1.0, 0.3), 8)
    assert steep["a"] >= 2 and steep["b"] == 0
    # Extremely steep: nothing extra is worth verifying (plain decoding).
    assert greedy_prefix_admission(survivals, 2, 2.0, StepCostModel.linear(0.0, 5.0), 8) == {"a": 0, "b": 0}


def test_budget_cap_is_respected():
    survivals = {"a": [0.99] * 6, "b": [0.99] * 6}
    lengths = greedy_prefix_admission(survivals, 2, 2.0, StepCostModel.flat(), 5)
    assert sum(lengths.values()) == 5


def test_async_budget_then_top_k():
    old = [0.9, 0.8, 0.1, 0.05]
    cost = StepCostModel([1, 2, 3, 4, 5], [1.0, 1.0, 1.0, 2.0, 2.0])  # jagged-friendly steps
    k = best_budget(old, 1, 1.0, cost, 4)
    assert k == 2
    fresh = {"a": [0.5, 0.4], "b": [0.95]}
    assert top_k_admission(fresh, k) == {"a": 1, "b": 1}


# ---- the same with the load signal (users waiting, a busy machine, a KV room) ----

LOADED_COST = StepCostModel([1, 2, 3], [1.0, 1 / 0.7, 1 / 0.6])
LOAD = LoadSignal(num_stalled=1, kv=KvRoom(block_size=4, spare_blocks=0, free_slots={"r": 2}),
                  device=DeviceCounters(gpu_other_utilization=0.1))


def with_load(admission):
    """`admission` run against the adaptive policy's load-aware base for LOAD."""
    def decide(survivals, base_tokens, base_tau, cost, max_extra):
        policy = AdaptivePolicy(LOADED_COST, max_batched_tokens=max_extra + base_tokens)
        base = policy.step_base(max_extra, int(base_tau), LOAD)
        return admission(survivals, base.tokens, base.tau, base.cost, base.max_extra,
                         **({"kv": base.kv} if admission is greedy_prefix_admission else {}))
    return decide


def test_load_aware_greedy_admission_keeps_the_target_distribution():
    assert within(first_token_frequency(with_load(greedy_prefix_admission), LOADED_COST, UNIFORM_DRAFT,
                                   confidences_depending_on_the_next_token)[0], 0.7)


def test_the_loaded_setting_is_one_where_anticipating_would_show():
    assert not within(first_token_frequency(with_load(global_search_admission), LOADED_COST, UNIFORM_DRAFT,
                                   confidences_depending_on_the_next_token)[0], 0.7)
