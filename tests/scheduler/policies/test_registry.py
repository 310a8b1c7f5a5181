"""The verification-policy registry and interface: every policy is complete
and buildable by name; the scheduler feeds it outcomes, step times and
departures without knowing which policy it holds."""
from __future__ import annotations

import inspect

import pytest

from engine.config import CacheConfig, SchedulerConfig
from scheduler.drafting import DraftingLimits
from scheduler.drafts import DraftBlock
from scheduler.load import StepCostModel
from scheduler.output import RunnerOutput
from scheduler.policies import (OFF, POLICIES, PolicyContext, PolicyStats, StaticPolicy, VerifyPolicy,
                                build_policy, policy_names)
from scheduler.request import Request, RequestStatus, SamplingParams
from scheduler.scheduler import Scheduler

CONTEXT = PolicyContext(max_draft=4, max_batched_tokens=64, step_cost=StepCostModel.flat())


def test_registry_lists_the_builtin_policies_and_off():
    names = policy_names()
    assert names[0] == OFF and set(names[1:]) == {"static", "adaptive", "adaptive-async"}


@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_implements_the_whole_interface(name):
    policy = build_policy(name, CONTEXT)
    assert isinstance(policy, VerifyPolicy)
    abstract = {n for n, m in inspect.getmembers(VerifyPolicy) if getattr(m, "__isabstractmethod__", False)}
    assert abstract == {"choose_lengths", "observe", "observe_step", "should_draft", "draft_length",
                        "forget", "stats"}
    assert isinstance(policy.stats(), PolicyStats)
    assert policy.should_draft("r") in (True, False)
    assert 1 <= policy.draft_length("r", 4) <= 4


def test_unknown_policy_and_missing_cost_fail_loudly():
    with pytest.raises(ValueError, match="unknown verification policy"):
        build_policy("psychic", CONTEXT)
    with pytest.raises(ValueError, match="needs a step-cost profile"):
        build_policy("adaptive", PolicyContext(max_draft=4, max_batched_tokens=64))


class RecordingPolicy(StaticPolicy):
    """Static lengths; records every call the scheduler makes."""

    def __init__(self):
        super().__init__(None)
        self.calls: list[tuple] = []

    def observe(self, request_id, num_verified, num_accepted):
        self.calls.append(("observe", request_id, num_verified, num_accepted))

    def observe_step(self, num_tokens, seconds):
        self.calls.append(("step", num_tokens, seconds))

    def forget(self, request_id):
        self.calls.append(("forget", request_id))


def running_with_drafts(policy, drafts=(5, 6, 7)) -> tuple[Scheduler, Request]:
    scheduler = Scheduler(SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=32, max_model_len=64),
                          CacheConfig(block_size=4, num_blocks=16),
                          drafting=DraftingLimits(max_tokens=4), verify_policy=policy)
    request = Request("a", [1, 2, 3], SamplingParams(temperature=0, max_tokens=20))
    scheduler.add_request(request)
    output = scheduler.schedule()
    scheduler.update_from_output(output, RunnerOutput({"a": [4]}, num_accepted={"a": 0}), lambda r, t: None)
    scheduler.install_drafts({"a": DraftBlock(list(drafts), [0.5] * len(drafts))})
    return scheduler, request


def test_scheduler_feeds_outcomes_step_times_and_departures_to_the_policy():
    policy = RecordingPolicy()
    scheduler, request = running_with_drafts(policy)
    output = scheduler.schedule()
    assert output.scheduled[0].num_spec_tokens == 3
    scheduler.update_from_output(output, RunnerOutput({"a": [5, 9]}, num_accepted={"a": 1}),
                                 lambda r, t: None)
    scheduler.observe_step_time(output.total_num_tokens, 0.25)
    scheduler.abort_request("a")
    assert policy.calls == [("observe", "a", 3, 1), ("step", 4, 0.25), ("forget", "a")]
    assert request.status is RequestStatus.FINISHED_ABORTED and not request.drafts
