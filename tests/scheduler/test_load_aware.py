"""Load-aware verification: drafts get only the budget and KV blocks that
nobody else needs, users left waiting raise the bar, a busy machine makes
every token cost, and none of it looks at a draft before deciding on it."""
from __future__ import annotations

import copy
import random

import pytest

from engine.config import CacheConfig, SchedulerConfig
from scheduler.admission import greedy_prefix_admission, survivals_from_confidences
from scheduler.drafting import DraftingLimits
from scheduler.drafts import DraftBlock
from scheduler.load import (IDLE, DeviceCounters, KvRoom, LoadedStepCost, LoadSignal,
                            StepCostModel)
from scheduler.output import RunnerOutput
from scheduler.policies import AdaptivePolicy, StaticPolicy
from scheduler.request import Request, SamplingParams
from scheduler.scheduler import Scheduler
from tests.scheduler.test_scheduler import FakeRunner, check_stop, drive, make_request, solo_output

# A CPU-like step cost: every token costs, the top of the curve saturated.
CPU_COST = ([1, 8, 32, 512], [0.044, 0.107, 0.168, 1.245])


def scheduler_with(policy=None, budget=64, num_blocks=64, block_size=4, max_seqs=8,
                   device=None, clock=None) -> Scheduler:
    kwargs = {"clock": clock} if clock else {}
    return Scheduler(SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=budget,
                                     max_model_len=512),
                     CacheConfig(block_size=block_size, num_blocks=num_blocks),
                     drafting=DraftingLimits(max_tokens=16, costs_compute=False),
                     verify_policy=policy, device_counters=device, **kwargs)


def decode_with_drafts(scheduler: Scheduler, prompts: dict[str, list[int]], num_drafts: int,
                       confidence: float = 0.9) -> list[Request]:
    """Prefill the prompts (one step), sample one token each, install drafts."""
    requests = [make_request(rid, prompt, max_tokens=100, eos=None) for rid, prompt in prompts.items()]
    for request in requests:
        scheduler.add_request(request)
    output = scheduler.schedule()
    assert all(item.samples for item in output.scheduled), "prefill must fit in one step"
    sampled = {r.request_id: [7] for r in requests}
    scheduler.update_from_output(output, RunnerOutput(sampled, num_accepted=dict.fromkeys(sampled, 0)),
                                 check_stop)
    scheduler.install_drafts({r.request_id: DraftBlock([8] * num_drafts, [confidence] * num_drafts)
                              for r in requests})
    return requests


def drafts_of(output) -> dict[str, int]:
    return {item.request.request_id: item.num_spec_tokens for item in output.scheduled}


# ---- the budget: admissions first --------------------------------------------


def test_a_long_queue_gets_the_budget_before_drafts():
    policy = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=16)  # idle: wants every draft
    scheduler = scheduler_with(policy, budget=16)
    decode_with_drafts(scheduler, {"a": [1, 2, 3], "b": [4, 5, 6]}, num_drafts=6)
    scheduler.add_request(make_request("long", list(range(1, 41))))
    output = scheduler.schedule()
    assert drafts_of(output) == {"a": 0, "b": 0, "long": 0}
    (admitted,) = [i for i in output.scheduled if i.request.request_id == "long"]
    assert admitted.num_query_tokens == 14  # all the budget the decoders left
    assert scheduler.load.stats.prefill_tokens == 6 + 14 and scheduler.load.stats.draft_tokens == 0


def test_drafts_take_what_the_queue_cannot_use():
    policy = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=32)
    scheduler = scheduler_with(policy, budget=32)
    decode_with_drafts(scheduler, {"a": [1, 2, 3], "b": [4, 5, 6]}, num_drafts=6)
    scheduler.add_request(make_request("short", [9, 9, 9, 9, 9]))
    output = scheduler.schedule()
    # 2 decode tokens + 5 prompt tokens leave 25: enough for all 12 drafts.
    assert drafts_of(output) == {"a": 6, "b": 6, "short": 0}


class RecordingAdaptive(AdaptivePolicy):
    """Records what the scheduler tells the policy."""

    def choose_lengths(self, candidates, budget_left, num_emitting=0, load=IDLE):
        self.seen = (budget_left, num_emitting, load)
        return super().choose_lengths(candidates, budget_left, num_emitting, load)


def test_the_base_includes_admitted_prefill_and_counts_stalled_users():
    policy = RecordingAdaptive(StepCostModel.flat(), max_batched_tokens=64)
    scheduler = scheduler_with(policy, budget=64, max_seqs=3)
    decode_with_drafts(scheduler, {"a": [1, 2, 3], "b": [4, 5, 6]}, num_drafts=4)
    for rid in ("c", "d", "e"):  # c is admitted (its prompt completes); d, e wait for a seat
        scheduler.add_request(make_request(rid, [3] * 10))
    scheduler.schedule()
    budget_left, num_emitting, load = policy.seen
    assert budget_left == 64 - 2 - 10  # B0 = 12 holds c's prefill
    assert num_emitting == 3 and load.num_stalled == 2 and load.num_waiting == 2
    assert load.num_prefill_tokens == 10  # c's prompt; a's and b's tokens are decode


def test_queue_age_is_the_oldest_waiting_request():
    now = [100.0]
    scheduler = scheduler_with(max_seqs=1, clock=lambda: now[0])
    first, second = make_request("first", [1, 2]), make_request("second", [3, 4])
    first.arrival_time, second.arrival_time = 90.0, 95.0
    scheduler.add_request(first)
    scheduler.add_request(second)
    scheduler.schedule()
    assert scheduler.load.stats.oldest_wait_s == pytest.approx(5.0)


# ---- users left waiting raise the bar ------------------------------------------


def confident_and_not() -> list[Request]:
    requests = []
    for rid, c in (("sure", 0.9), ("unsure", 0.4)):
        request = Request(rid, [1, 2, 3], SamplingParams(temperature=0.0))
        request.drafts = DraftBlock([5] * 6, [c] * 6)
        requests.append(request)
    return requests


def test_more_users_waiting_means_fewer_drafts():
    totals = []
    for stalled in (0, 2, 8, 32, 128):
        policy = AdaptivePolicy(StepCostModel(*map(list, CPU_COST)), max_batched_tokens=64)
        lengths = policy.choose_lengths(confident_and_not(), 62, 2, LoadSignal(num_stalled=stalled))
        totals.append(sum(lengths.values()))
    assert totals == sorted(totals, reverse=True)
    assert totals[0] >= 4 and totals[-1] == 0


def test_a_step_carrying_prefill_prices_drafts_against_a_decode_step():
    """Next to a long prefill step an extra token looks cheap, but it delays
    everyone in the step by the same seconds for a gain worth one short
    decode step: fewer drafts than Theta against the whole step would take."""
    cost = StepCostModel(*map(list, CPU_COST))
    chosen = {}
    for prefill in (0, 300):  # the same 302 tokens in the step; 300 of them prefill or not
        policy = AdaptivePolicy(copy.deepcopy(cost), max_batched_tokens=302 + 62)
        lengths = policy.choose_lengths(confident_and_not(), 62, 2, LoadSignal(num_prefill_tokens=prefill))
        chosen[prefill] = sum(lengths.values())
    assert chosen[300] < chosen[0]


def test_felt_cost_is_the_plain_cost_without_prefill():
    from scheduler.admission import FeltStepCost
    cost = StepCostModel(*map(list, CPU_COST))
    felt = FeltStepCost(cost, base_tokens=5, decode_tokens=5)
    for tokens in range(5, 80):
        assert felt.step_seconds(tokens) == pytest.approx(cost.step_seconds(tokens), rel=1e-9)
    carrying = FeltStepCost(cost, base_tokens=305, decode_tokens=5)
    assert carrying.step_seconds(305) == pytest.approx(cost.step_seconds(5))
    stretch = cost.step_seconds(306) - cost.step_seconds(305)
    assert carrying.step_seconds(306) == pytest.approx(cost.step_seconds(5) + stretch)


def test_users_arriving_during_the_step_count_too():
    totals = []
    for rate in (0.0, 10.0, 100.0, 1000.0):  # requests/s; a step here takes 0.05-0.2 s
        policy = AdaptivePolicy(StepCostModel(*map(list, CPU_COST)), max_batched_tokens=64)
        lengths = policy.choose_lengths(confident_and_not(), 62, 2, LoadSignal(arrival_rate=rate))
        totals.append(sum(lengths.values()))
    assert totals == sorted(totals, reverse=True) and totals[0] > totals[-1] == 0


def test_arrival_rate_over_recent_arrivals_and_pauses():
    now = [0.0]
    scheduler = scheduler_with(clock=lambda: now[0])
    for i in range(5):  # one request every 0.5 s
        request = make_request(f"r{i}", [1, 2])
        request.arrival_time = 0.5 * i
        scheduler.add_request(request)
    now[0] = 2.0
    assert scheduler.load.arrival_rate(now[0]) == pytest.approx(4 / 2.0)
    assert scheduler.load.arrival_rate(10.0) == pytest.approx(4 / 10.0)  # a pause lowers it
    burst = scheduler_with(clock=lambda: 0.0)
    for i in range(3):
        burst.add_request(make_request(f"b{i}", [1]))
    assert burst.load.arrival_rate(burst.waiting[0].arrival_time) == pytest.approx(2.0)  # over >= 1 s


def test_a_busy_machine_makes_every_token_cost():
    # Flat up to 32 tokens: on an idle machine drafts ride on capacity nobody uses.
    cost = StepCostModel([1, 32, 64], [0.05, 0.05, 0.45])
    lengths = {}
    for busy in (0.0, 0.5, 1.0):
        policy = AdaptivePolicy(copy.deepcopy(cost), max_batched_tokens=64)
        load = LoadSignal(device=DeviceCounters(gpu_other_utilization=busy))
        lengths[busy] = sum(policy.choose_lengths(confident_and_not(), 62, 2, load).values())
    assert lengths[0.0] > lengths[0.5] >= lengths[1.0]
    assert lengths[0.0] == 12  # flat and idle: everything


def test_loaded_cost_is_the_curve_plus_the_busy_share_of_the_saturated_slope():
    cost = StepCostModel([1, 8, 512], [0.05, 0.05, 1.0])
    slope = (1.0 - 0.05) / (512 - 8)
    assert cost.saturated_seconds_per_token() == pytest.approx(slope)
    assert LoadedStepCost(cost, 0.0).step_seconds(8) == pytest.approx(0.05)
    assert LoadedStepCost(cost, 0.5).step_seconds(8) == pytest.approx(0.05 + 0.5 * slope * 8)


def test_device_counters_busy_is_the_largest_known_share():
    assert DeviceCounters().busy == 0.0
    assert DeviceCounters(gpu_other_utilization=0.3, cpu_wait_fraction=0.6).busy == 0.6
    assert DeviceCounters(cpu_wait_fraction=1.7).busy == 1.0
    assert LoadSignal().busy == 0.0


# ---- KV pressure ----------------------------------------------------------------


def test_drafts_never_take_a_block_a_running_request_needs():
    """A's drafts need a new block; B's next real token needs one too and
    only one is free. Drafting first would preempt B; real tokens come first
    and the cache is then too full for drafts."""
    scheduler = scheduler_with(StaticPolicy(None), num_blocks=3, block_size=4)
    decode_with_drafts(scheduler, {"a": [1, 2, 3], "b": [4, 5, 6, 7]}, num_drafts=3)
    output = scheduler.schedule()
    assert scheduler.num_preemptions == 0
    assert drafts_of(output) == {"a": 0, "b": 0}
    assert scheduler.load.stats.kv_pressure and scheduler.load.stats.kv_backoff_steps == 1


def test_drafts_use_slots_already_held_and_spare_blocks_only():
    # 4 running requests hold 1 full block each (3 tokens + the real slot);
    # 6 free blocks, 4 kept for growth: the drafts share 2 new blocks, which
    # the first request in packed order takes (6 drafts need 2 blocks).
    scheduler = scheduler_with(StaticPolicy(None), num_blocks=10, block_size=4)
    decode_with_drafts(scheduler, {f"r{i}": [1, 2, 3] for i in range(4)}, num_drafts=6)
    output = scheduler.schedule()
    assert drafts_of(output) == {"r0": 6, "r1": 0, "r2": 0, "r3": 0}
    assert scheduler.block_manager.num_free_blocks == 4
    # Slots a request already holds cost no block: with 2 prompt tokens the
    # real token leaves one slot in the first block for one draft each.
    scheduler = scheduler_with(StaticPolicy(None), num_blocks=4, block_size=4)
    decode_with_drafts(scheduler, {"x": [1, 2], "y": [3, 4]}, num_drafts=6)
    assert drafts_of(scheduler.schedule()) == {"x": 1, "y": 1}


def test_no_drafts_while_the_queue_head_waits_for_blocks():
    scheduler = scheduler_with(StaticPolicy(None), num_blocks=8, block_size=4)
    decode_with_drafts(scheduler, {"a": [1, 2, 3]}, num_drafts=3)
    scheduler.add_request(make_request("big", [5] * 30))  # 8 blocks: more than are free
    output = scheduler.schedule()
    assert drafts_of(output) == {"a": 0}
    assert scheduler.load.stats.kv_pressure


@pytest.mark.parametrize("seed", range(6))
def test_soak_drafts_never_crowd_out_real_tokens_or_admissions(seed):
    """Property, on tight caches with drafts that mostly survive: a step
    that verifies drafts preempted nobody in planning, left every running
    request a block to grow into, and admitted everyone who had a seat."""
    rng = random.Random(seed)
    scheduler = scheduler_with(StaticPolicy(None), num_blocks=rng.choice([12, 20]),
                               budget=rng.choice([12, 32]), max_seqs=rng.choice([3, 5]))
    runner = FakeRunner(scheduler, rng, accept_prob=0.9, max_drafts=6)
    requests = []

    def add(count: int) -> None:
        for _ in range(count):
            prompt = [rng.randrange(1, 50) for _ in range(rng.randint(2, 14))]
            requests.append(make_request(f"r{len(requests)}", prompt, max_tokens=rng.randint(4, 24)))
            scheduler.add_request(requests[-1])

    schedule = scheduler.schedule
    verified_steps = []

    def checked_schedule():
        preemptions = scheduler.num_preemptions
        output = schedule()
        if any(item.num_spec_tokens for item in output.scheduled):
            verified_steps.append(output)
            assert scheduler.num_preemptions == preemptions
            assert scheduler.block_manager.num_free_blocks >= scheduler.num_running
            assert not scheduler.waiting or scheduler.num_running == scheduler.config.max_num_seqs
        return output

    scheduler.schedule = checked_schedule
    add(4)
    drive(scheduler, runner, between_steps=lambda step, _: add(rng.randint(0, 2)) if step < 40 else None)
    assert verified_steps, "the workload never verified a draft"
    for request in requests:
        assert request.output_token_ids == solo_output(request.prompt_token_ids,
                                                       request.sampling_params.max_tokens)


# ---- non-anticipation ----------------------------------------------------------------


def random_load(rng: random.Random, candidates: list[Request]) -> LoadSignal:
    free = {r.request_id: rng.randint(0, 3) for r in candidates}
    kv = rng.choice([KvRoom(), KvRoom(4, rng.randint(0, 3), free)])
    device = DeviceCounters(gpu_other_utilization=rng.random())
    return LoadSignal(num_stalled=rng.randint(0, 6), kv=kv, device=device)


def jagged_cost(rng: random.Random) -> StepCostModel:
    """Step times that jump and stay flat: where a global search would look
    past a dip (the §4 counterexample's shape)."""
    seconds, total = [], 0.05
    for _ in range(12):
        total += rng.choice([0.0, 0.0, 0.01, 0.3])
        seconds.append(total)
    return StepCostModel(list(range(1, 13)), seconds)


def with_confidences(requests: list[Request], confidences: dict[str, list[float]]) -> list[Request]:
    out = []
    for request in requests:
        twin = copy.copy(request)
        conf = confidences[request.request_id]
        twin.drafts = DraftBlock(list(range(len(conf))), conf)
        out.append(twin)
    return out


@pytest.mark.parametrize("asynchronous", [False, True])
def test_decision_on_positions_up_to_k_ignores_drafts_past_k(asynchronous):
    """Same load, same drafts up to position k, different drafts after it
    (all sure, all hopeless, random): every request verifies the same prefix
    up to k. The price terms are fixed by the load before any survival is
    read, and the walk decides position k before it sees a_{k+1}."""
    rng = random.Random(7)
    for trial in range(300):
        cost, previous = jagged_cost(rng), sorted((rng.random() for _ in range(8)), reverse=True)
        requests = [Request(f"r{i}", [1, 2], SamplingParams()) for i in range(rng.randint(1, 3))]
        confidences = {r.request_id: [rng.random() for _ in range(5)] for r in requests}
        load, budget = random_load(rng, requests), rng.randint(1, 12)

        def decide(conf):  # B0 = one token per request, where the cost is jagged
            policy = AdaptivePolicy(cost, budget + len(requests), asynchronous=asynchronous)
            policy._previous_ranked = previous  # last step's survivals set the async budget
            return policy.choose_lengths(with_confidences(requests, conf), budget, len(requests), load)

        for rid in confidences:
            for k in range(5):
                tails = ([1.0] * (5 - k), [0.0] * (5 - k), [rng.random() for _ in range(5 - k)])
                prefixes = {min(decide({**confidences, rid: confidences[rid][:k] + tail})[rid], k)
                            for tail in tails}
                assert len(prefixes) == 1, (trial, rid, k, confidences)


def test_kv_room_closes_a_request_and_the_walk_goes_on():
    survivals = {"a": survivals_from_confidences([0.99] * 4), "b": [0.9]}
    room = KvRoom(block_size=2, spare_blocks=0, free_slots={"a": 1, "b": 1})
    assert greedy_prefix_admission(survivals, 2, 2.0, StepCostModel.flat(), 8, room) == {"a": 1, "b": 1}


def test_adaptive_answers_fit_the_kv_room_so_the_scheduler_never_cuts_them():
    rng = random.Random(3)
    for _ in range(100):
        requests = [Request(f"r{i}", [1, 2], SamplingParams()) for i in range(3)]
        for r in requests:
            r.drafts = DraftBlock([1] * 6, [rng.uniform(0.5, 1.0) for _ in range(6)])
        room = KvRoom(4, rng.randint(0, 2), {r.request_id: rng.randint(0, 3) for r in requests})
        policy = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=64)
        lengths = policy.choose_lengths(requests, 30, 3, LoadSignal(kv=room))
        blocks = sum(room.new_blocks(rid, length) for rid, length in lengths.items())
        assert blocks <= room.spare_blocks
