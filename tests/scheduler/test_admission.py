"""scheduler/admission.py: which draft positions a step verifies, by the
throughput they buy (Theta = tau * SPS), as a prefix of each request."""
from __future__ import annotations

import math

from scheduler.admission import (FeltStepCost, admit_from_base, first_draft_threshold, greedy_prefix_admission, ranked_positions,
                                 StepBase, survivals_from_confidences, top_k_admission)
from scheduler.load import KvRoom, StepCostModel

FLAT = StepCostModel.flat()  # an extra token costs nothing: every position pays
STEEP = StepCostModel.linear(base=0.01, per_token=0.01)  # each token costs a whole step's worth


def test_survivals_are_running_products_of_clamped_confidences():
    assert survivals_from_confidences([0.5, 0.5, 2.0, -1.0]) == [0.5, 0.25, 0.25, 0.0]


def test_positions_rank_by_survival_and_keep_each_request_s_order():
    ranked = ranked_positions({"a": [0.9, 0.5], "b": [0.9, 0.9]})
    assert ranked == [(0.9, 1, "a"), (0.9, 1, "b"), (0.9, 2, "b"), (0.5, 2, "a")]


def test_a_flat_cost_admits_everything_and_a_steep_one_only_sure_drafts():
    survivals = {"a": [0.9, 0.6, 0.2], "b": [0.3]}
    assert greedy_prefix_admission(survivals, 2, 2.0, FLAT, max_extra=10) == {"a": 3, "b": 1}
    steep = greedy_prefix_admission(survivals, 2, 2.0, STEEP, max_extra=10)
    assert steep["b"] == 0 and steep["a"] < 3


def test_the_budget_and_the_kv_room_bound_the_admission():
    survivals = {"a": [0.9, 0.8, 0.7], "b": [0.85]}
    assert sum(greedy_prefix_admission(survivals, 2, 2.0, FLAT, max_extra=2).values()) == 2
    room = KvRoom(block_size=2, spare_blocks=0, free_slots={"a": 1})  # a has one free slot, no new block
    assert greedy_prefix_admission(survivals, 2, 2.0, FLAT, max_extra=10, kv=room) == {"a": 1, "b": 0}
    base = StepBase(tokens=2, tau=2.0, cost=FLAT, max_extra=10, kv=room)
    assert admit_from_base(survivals, base) == {"a": 1, "b": 0}


def test_top_k_admits_the_k_best_positions_as_prefixes():
    assert top_k_admission({"a": [0.9, 0.2], "b": [0.5, 0.4]}, budget=3) == {"a": 1, "b": 2}


def test_felt_cost_is_plain_cost_without_prefill_and_higher_with_it():
    plain = FeltStepCost(STEEP, base_tokens=4, decode_tokens=4)
    assert abs(plain.step_seconds(6) - STEEP.step_seconds(6)) < 1e-12
    felt = FeltStepCost(STEEP, base_tokens=20, decode_tokens=4)
    stretch = STEEP.step_seconds(21) - STEEP.step_seconds(20)
    assert felt.step_seconds(20) == STEEP.step_seconds(4)
    assert abs(felt.step_seconds(21) - STEEP.step_seconds(4) * (1 + stretch / STEEP.step_seconds(4))) < 1e-12


def test_first_draft_threshold_is_where_a_lone_first_draft_starts_to_be_admitted():
    for tau, tokens in ((1.0, 1), (8.0, 8), (8.0, 40)):
        base = StepBase(tokens=tokens, tau=tau, cost=STEEP, max_extra=10)
        threshold = first_draft_threshold(base)
        assert 0 < threshold
        assert admit_from_base({"r": [threshold * 1.001]}, base) == {"r": 1}
        assert admit_from_base({"r": [threshold * 0.999]}, base) == {"r": 0}
    busy, idle = (first_draft_threshold(StepBase(tokens=8, tau=tau, cost=STEEP, max_extra=10)) for tau in (8, 1))
    assert busy > idle  # more users feel each extra token
    assert first_draft_threshold(StepBase(tokens=8, tau=8, cost=STEEP, max_extra=0)) == math.inf
