"""scheduler/step_load.py: the load signal a step's drafts are priced with."""
from __future__ import annotations

from scheduler.block_manager import BlockManager
from scheduler.drafts import DraftBlock
from scheduler.load import DeviceCounters
from scheduler.plan import StepPlan
from scheduler.request import Request, SamplingParams
from scheduler.step_load import StepLoad


def decoding(rid, arrival=0.0):
    request = Request(rid, [1, 2, 3], SamplingParams(), arrival_time=arrival)
    request.append_output_token(4)
    request.num_computed_tokens = 3
    request.drafts = DraftBlock([5, 6], [0.5, 0.5])
    return request


def test_stalled_users_waiting_time_and_the_kv_room():
    blocks = BlockManager(num_blocks=10, block_size=4)
    load = StepLoad(blocks, lambda: DeviceCounters(cpu_wait_fraction=0.25), clock=lambda: 10.0)
    running = decoding("a")
    plan = StepPlan(running, num_query_tokens=1, block_ids=blocks.allocate_slots("a", 4))  # 4 slots, 4 used
    queued = Request("w", [1], SamplingParams(), arrival_time=7.0)
    signal = load.signal([plan], [plan], [running], [queued], kv_back_off=False)
    assert (signal.num_stalled, signal.num_waiting, signal.oldest_wait_s) == (1, 1, 3.0)
    assert signal.kv.spare_blocks == 9 - 1 and signal.kv.free_slots == {"a": 0} and not signal.kv_pressure
    assert signal.busy == 0.25 and load.stats.num_stalled == 1


def test_kv_pressure_leaves_no_room_for_drafts_and_is_counted():
    blocks = BlockManager(num_blocks=1, block_size=4)
    load = StepLoad(blocks, None, clock=lambda: 0.0)
    running = [decoding("a"), decoding("b")]
    plans = [StepPlan(r, num_query_tokens=1) for r in running]
    signal = load.signal(plans, plans, running, [], kv_back_off=False)  # 1 free block, 2 requests to grow
    assert signal.kv_pressure and signal.kv.spare_blocks == 0
    assert load.stats.kv_backoff_steps == 1


def test_the_arrival_rate_is_measured_over_recent_arrivals():
    load = StepLoad(BlockManager(4, 4), None, clock=lambda: 0.0)
    assert load.arrival_rate(5.0) == 0.0
    for t in (0.0, 1.0, 2.0, 3.0):
        load.arrived(Request(f"r{t}", [1], SamplingParams(), arrival_time=t))
    assert load.arrival_rate(3.0) == 1.0
    assert load.arrival_rate(6.0) == 0.5  # a pause lowers it at once


def test_the_budget_is_accounted_to_prefill_decode_and_drafts():
    load = StepLoad(BlockManager(4, 4), None, clock=lambda: 0.0)
    prefill = StepPlan(Request("p", [1, 2, 3, 4, 5], SamplingParams()), num_query_tokens=5)
    decode = StepPlan(decoding("d"), num_query_tokens=1, num_spec_tokens=2)
    load.account([prefill, decode])
    assert (load.stats.prefill_tokens, load.stats.decode_tokens, load.stats.draft_tokens) == (5, 1, 2)
