"""scheduler/load.py: the step-cost curve, the KV room and the load signal."""
from __future__ import annotations

import pytest

from scheduler.load import (IDLE, DeviceCounters, KvRoom, KvTally, LoadedStepCost, LoadSignal, StepCostModel,
                            probe_sizes)


def test_the_curve_never_falls_and_extrapolates_the_last_slope():
    cost = StepCostModel([1, 4, 8], [0.02, 0.01, 0.03])  # a noisy dip at 4 is flattened
    assert cost.step_seconds(4) == 0.02 and cost.step_seconds(6) == 0.025
    assert abs(cost.step_seconds(12) - 0.04) < 1e-12 and abs(cost.saturated_seconds_per_token() - 0.0025) < 1e-12
    assert StepCostModel.from_json(cost.to_json()).table() == cost.table()


def test_a_busy_machine_prices_every_token_at_the_saturated_slope():
    cost = StepCostModel.linear(base=0.01, per_token=0.001, max_tokens=64)
    assert LoadedStepCost(cost, busy=0.0).step_seconds(10) == cost.step_seconds(10)
    loaded = LoadedStepCost(cost, busy=0.5)
    assert abs(loaded.step_seconds(10) - (cost.step_seconds(10) + 0.5 * 0.001 * 10)) < 1e-12


def test_kv_room_counts_new_blocks_beyond_free_slots():
    room = KvRoom(block_size=4, spare_blocks=1, free_slots={"a": 2})
    assert [room.new_blocks("a", n) for n in (1, 2, 3, 6, 7)] == [0, 0, 1, 1, 2]
    tally = KvTally(room)
    assert tally.take_prefix("a", 10) == 6 and tally.used == 1
    assert tally.take_prefix("b", 3) == 0  # the one spare block is taken
    assert KvTally(KvRoom()).take_prefix("c", 5) == 5  # no limit


def test_busy_comes_from_the_device_counters():
    assert IDLE.busy == 0.0
    signal = LoadSignal(device=DeviceCounters(gpu_other_utilization=0.3, cpu_wait_fraction=0.6))
    assert signal.busy == 0.6


def test_probe_sizes_stop_at_the_budget():
    assert probe_sizes(10) == [1, 2, 3, 4, 6, 8] and probe_sizes(0) == [1]


def test_drafts_are_priced_as_query_rows_of_requests_already_in_the_step():
    # The decode curve: each token another request (+10 ms); rows of one request +1 ms.
    cost = StepCostModel([1, 8, 16], [0.01, 0.08, 0.16], row_seconds=[0.01, 0.017, 0.025])
    drafted = cost.drafted(4)  # four requests decoding, then drafts
    assert drafted.step_seconds(4) == cost.step_seconds(4) == 0.04
    assert abs(drafted.step_seconds(6) - (0.04 + 0.002)) < 1e-12  # two drafts: two rows, not two requests
    assert drafted.step_seconds(3) == cost.step_seconds(3)  # below the base: the decode curve
    assert abs(cost.predicted_seconds(6, num_requests=4) - 0.042) < 1e-12
    assert cost.predicted_seconds(6) == cost.step_seconds(6) == pytest.approx(0.06)  # requests unknown
    plain = StepCostModel([1, 8, 16], [0.01, 0.08, 0.16])  # no rows curve: drafts as requests, as before
    assert plain.drafted(4).step_seconds(6) == plain.step_seconds(6)


def test_a_step_measured_as_predicted_for_its_requests_moves_nothing():
    cost = StepCostModel([1, 8, 16], [0.01, 0.08, 0.16], row_seconds=[0.01, 0.017, 0.025])
    cost.observe(6, 0.042, num_requests=4)  # 4 requests and 2 drafts, exactly as the two curves say
    assert abs(cost.scale - 1.0) < 1e-12 and cost.seconds == [0.01, 0.08, 0.16]
    cost.observe(6, 0.042)  # the same step read as 6 requests looks fast: the curve moves
    assert cost.scale < 1.0
    again = StepCostModel.from_json(cost.to_json())
    assert again.row_seconds is not None and again.drafted(4).step_seconds(6) == cost.drafted(4).step_seconds(6)
