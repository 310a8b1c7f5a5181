"""The contract's counterexample (speculation.md §4): with confidences that
depend on the drafted tokens, a global search over fresh survivals biases the
output, the early-stop greedy admission does not.

Target (0.7, 0.3) at the first position, draft (0.5, 0.5), c_1 = 0.8 and
c_2 = 1 if x_1 == 0 else 0, SPS(1..3) = 1.0, 0.5, 0.45. Global search gives
P(first token = 0) = 0.85; greedy admission keeps 0.7.
"""
from __future__ import annotations

import math

import torch

from engine.spec.rejection import rejection_sample
from scheduler.admission import (global_search_admission, greedy_prefix_admission,
                                 survivals_from_confidences, top_k_admission, best_budget)
from scheduler.load import DeviceCounters, KvRoom, LoadSignal, StepCostModel
from scheduler.policies import AdaptivePolicy

TARGET = torch.tensor([0.7, 0.3])
DRAFT = torch.tensor([0.5, 0.5])
COST = StepCostModel([1, 2, 3], [1.0, 2.0, 1 / 0.45])
TRIALS = 20000


def first_token_frequency(policy, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    zeros = 0
    for _ in range(TRIALS):
        x = torch.multinomial(DRAFT, 2, replacement=True, generator=gen).tolist()
        confidences = [0.8, 1.0 if x[0] == 0 else 0.0]
        length = policy({"r": survivals_from_confidences(confidences)}, 1, 1.0, COST, 2)["r"]
        # Positions past the first have a point-mass target so only x_1 matters.
        target = torch.stack([TARGET, torch.tensor([1.0, 0.0]), torch.tensor([1.0, 0.0])])[: length + 1]
        result = rejection_sample(torch.tensor(x[:length], dtype=torch.long), DRAFT.repeat(length, 1) if length else None,
                                  target, [length], [gen])
        zeros += result.emitted_token_ids[0][0] == 0
    return zeros / TRIALS


def within(p_hat: float, p: float, sigmas: float = 5.0) -> bool:
    return abs(p_hat - p) <= sigmas * math.sqrt(p * (1 - p) / TRIALS)


def test_greedy_admission_keeps_the_target_distribution():
    assert within(first_token_frequency(greedy_prefix_admission), 0.7)


def test_global_search_on_fresh_confidences_is_biased():
    freq = first_token_frequency(global_search_admission)
    assert within(freq, 0.85)
    assert not within(freq, 0.7)


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
    assert within(first_token_frequency(with_load(greedy_prefix_admission)), 0.7)


def test_the_loaded_setting_is_one_where_anticipating_would_show():
    assert not within(first_token_frequency(with_load(global_search_admission)), 0.7)
