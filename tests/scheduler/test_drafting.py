"""Who drafts, how much, and where: the scheduler's drafting decisions."""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, SchedulerConfig
from scheduler.drafting import DraftingLimits
from scheduler.drafts import FREE_DRAFTING, DraftBlock
from scheduler.load import StepCostModel
from scheduler.output import RunnerOutput
from scheduler.policies import AdaptivePolicy
from scheduler.request import Request, SamplingParams
from scheduler.scheduler import Scheduler


def decoding(limits: DraftingLimits, prompt_len=3, num_blocks=16, policy=None, **params) -> tuple[Scheduler, Request]:
    """A scheduler with one request that has just sampled its first token."""
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=64, max_model_len=32),
                          CacheConfig(block_size=4, num_blocks=num_blocks), drafting=limits,
                          verify_policy=policy)
    request = Request("a", list(range(1, prompt_len + 1)), SamplingParams(temperature=0, **params))
    scheduler.add_request(request)
    output = scheduler.schedule()
    scheduler.update_from_output(output, RunnerOutput({"a": [7]}, num_accepted={"a": 0}), lambda r, t: None)
    return scheduler, request


def test_room_is_bounded_by_limits_max_tokens_and_context():
    scheduler, request = decoding(DraftingLimits(max_tokens=8), max_tokens=20)
    (slot,) = scheduler.draft_slots([request])
    assert slot.max_tokens == 8 and slot.request is request
    scheduler, request = decoding(DraftingLimits(max_tokens=8), max_tokens=4)
    assert scheduler.draft_slots([request])[0].max_tokens == 2  # 1 emitted, 1 left for the bonus
    scheduler, request = decoding(DraftingLimits(max_tokens=16), prompt_len=26, max_tokens=100)
    assert scheduler.draft_slots([request])[0].max_tokens == 32 - 27 - 1


def test_opted_out_and_exhausted_requests_do_not_draft():
    scheduler, request = decoding(DraftingLimits(max_tokens=8), max_tokens=20, speculative=False)
    assert scheduler.draft_slots([request]) == []
    scheduler, request = decoding(DraftingLimits(max_tokens=8), max_tokens=2)
    assert scheduler.draft_slots([request]) == []


def test_lookahead_kv_is_reserved_or_the_request_decodes_plainly():
    scheduler, request = decoding(DraftingLimits(max_tokens=4, num_lookahead_slots=4), max_tokens=20)
    (slot,) = scheduler.draft_slots([request])
    assert len(slot.block_ids) * 4 >= request.num_tokens + 4
    assert slot.block_ids == scheduler.block_manager.get_block_ids("a")
    tight, request = decoding(DraftingLimits(max_tokens=4, num_lookahead_slots=8), num_blocks=2, max_tokens=20)
    assert tight.draft_slots([request]) == []
    tight.block_manager.check_integrity()


def test_costly_drafters_follow_the_policy_backoff_free_ones_do_not():
    swamped = AdaptivePolicy(StepCostModel.linear(0.0, 1.0), max_batched_tokens=64)
    for costly in (True, False):
        scheduler, request = decoding(DraftingLimits(max_tokens=4, costs_compute=costly),
                                      policy=swamped, max_tokens=20)
        swamped.backoff.failed("a")  # drafts did not pay last time
        assert bool(scheduler.draft_slots([request])) is not costly


def test_install_ignores_requests_that_are_gone():
    scheduler, request = decoding(DraftingLimits(max_tokens=4), max_tokens=20)
    scheduler.abort_request("a")
    scheduler.install_drafts({"a": DraftBlock([1, 2], [0.5, 0.5]), "ghost": DraftBlock([1], [0.5])})
    assert not request.drafts


def test_draft_blocks_keep_tokens_and_confidences_aligned():
    block = DraftBlock([1, 2, 3], [0.9, 0.8, 0.7], probs=[[1.0], [0.5], [0.2]], source="x")
    assert block.prefix(2) == DraftBlock([1, 2], [0.9, 0.8], [[1.0], [0.5]], "x")
    assert block.prefix(5) is block
    with pytest.raises(ValueError):
        DraftBlock([1, 2], [0.5])


def test_slots_carry_the_policy_s_draft_economics():
    policy = AdaptivePolicy(StepCostModel.linear(base=0.01, per_token=0.004, max_tokens=64), max_batched_tokens=64)
    scheduler, request = decoding(DraftingLimits(max_tokens=4), max_tokens=20, policy=policy)
    scheduler.schedule()  # a step's load reaches the policy
    (slot,) = scheduler.draft_slots([request])
    assert slot.economics == policy.draft_economics() and slot.economics.first_draft_threshold > 0
    free, request = decoding(DraftingLimits(max_tokens=4, costs_compute=False), max_tokens=20,
                             policy=AdaptivePolicy(StepCostModel.linear(base=0.01, per_token=0.004, max_tokens=64),
                                                   max_batched_tokens=64))
    free.schedule()
    assert free.draft_slots([request])[0].economics == free.verify_policy.draft_economics() != FREE_DRAFTING
