"""scheduler/load.py: the step-cost curve, the KV room and the load signal."""
from __future__ import annotations

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
