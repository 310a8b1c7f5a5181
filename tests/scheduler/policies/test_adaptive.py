"""scheduler/policies/adaptive.py: verify what pays at the current load,
and back off drafting that never pays."""
from __future__ import annotations

import pytest

from scheduler.drafts import FREE_DRAFTING, DraftBlock
from scheduler.load import LoadSignal, StepCostModel
from scheduler.policies.adaptive import MAX_BACKOFF_STEPS, AdaptivePolicy, DraftingBackoff
from scheduler.request import Request, SamplingParams

STEEP = StepCostModel.linear(base=0.01, per_token=0.004, max_tokens=64)


def with_drafts(rid, confidences):
    request = Request(rid, [1], SamplingParams())
    request.drafts = DraftBlock(list(range(len(confidences))), list(confidences))
    return request


def test_confident_drafts_are_verified_unconfident_ones_not():
    policy = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=4)
    lengths = policy.choose_lengths([with_drafts("a", [0.95, 0.95, 0.05, 0.05])], budget_left=63)
    assert lengths == {"a": 2}


def test_waiting_users_make_drafts_dearer():
    idle = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=4)
    busy = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=4)
    candidates = [with_drafts("a", [0.6] * 4)]
    relaxed = idle.choose_lengths(candidates, budget_left=63)["a"]
    pressed = busy.choose_lengths(candidates, budget_left=63, load=LoadSignal(num_stalled=30))["a"]
    assert pressed < relaxed


def test_draft_length_follows_the_last_verified_length():
    policy = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=64, max_draft=8)
    assert policy.draft_length("a", 8) == 8  # nothing known yet
    policy.choose_lengths([with_drafts("a", [0.9, 0.9])], budget_left=63)
    assert policy.draft_length("a", 8) == 3
    policy.forget("a")
    assert policy.draft_length("a", 8) == 8


def test_backoff_doubles_up_to_a_cap_and_resets_on_acceptance():
    backoff = DraftingBackoff()
    skipped = []
    for _ in range(6):
        backoff.failed("a")
        skips = 0
        while not backoff.should_draft("a"):
            skips += 1
        skipped.append(skips)
    assert skipped == [1, 2, 4, 8, 16, 16] and MAX_BACKOFF_STEPS == 16
    backoff.paid("a")
    assert backoff.should_draft("a")


def test_draft_economics_follow_the_latest_load():
    policy = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=4)
    assert policy.draft_economics() == FREE_DRAFTING  # no step seen yet
    policy.observe_load(budget_left=63, num_emitting=1, load=LoadSignal())
    alone = policy.draft_economics()
    policy.observe_load(budget_left=56, num_emitting=8, load=LoadSignal())
    eight = policy.draft_economics()
    policy.observe_load(budget_left=56, num_emitting=8, load=LoadSignal(num_stalled=30))
    queued = policy.draft_economics()
    thresholds = [terms.first_draft_threshold for terms in (alone, eight, queued)]
    assert 0 < thresholds[0] < thresholds[1] < thresholds[2]
    # A token saves its request one decode step, shared by every user waiting on the step.
    assert alone.accepted_token_seconds == pytest.approx(STEEP.step_seconds(1))
    assert queued.accepted_token_seconds == pytest.approx(STEEP.step_seconds(8) / (8 + 30))
    assert alone.verify_token_seconds == pytest.approx(STEEP.step_seconds(2) - STEEP.step_seconds(1))
    eight = eight.first_draft_threshold
    # The same rule as the admission: a lone draft just above it is verified, just below it is not.
    assert policy.choose_lengths([with_drafts("a", [eight * 1.01])], budget_left=56, num_emitting=8) == {"a": 1}
    assert policy.choose_lengths([with_drafts("b", [eight * 0.99])], budget_left=56, num_emitting=8) == {"b": 0}


def test_a_block_its_drafter_calibrated_is_not_calibrated_again():
    """Once the policy's calibrator has learnt that drafts at 0.9 all fail,
    it verifies none of a raw 0.9 block; a block the drafter flags as
    calibrated (the hybrid maps each source online) is read as it is."""
    policy = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=2)
    for i in range(200):
        policy.choose_lengths([with_drafts(f"r{i}", [0.9, 0.9])], budget_left=63)
        policy.observe(f"r{i}", num_verified=2, num_accepted=0)
        policy.forget(f"r{i}")
    assert policy.choose_lengths([with_drafts("raw", [0.9, 0.9])], budget_left=63) == {"raw": 0}
    flagged = Request("flagged", [1], SamplingParams())
    flagged.drafts = DraftBlock([5, 6], [0.9, 0.9], calibrated=True)
    assert policy.choose_lengths([flagged], budget_left=63) == {"flagged": 2}
    assert flagged.drafts.prefix(1).calibrated


def test_a_flagged_blocks_outcomes_are_reported_but_do_not_teach_the_map_raw_blocks_read():
    """The hybrid's head blocks come flagged, its n-gram blocks raw: the
    head's failures must not teach the policy's map to distrust n-gram's
    raw 0.9, nor count against the request's luck; the calibration report
    still counts them."""
    policy = AdaptivePolicy(STEEP, max_batched_tokens=64, max_draft=2)
    flagged = Request("r", [1], SamplingParams())
    flagged.drafts = DraftBlock([5, 6], [0.9, 0.9], calibrated=True)
    for _ in range(200):  # one request: its luck would be learnt too
        policy.choose_lengths([flagged], budget_left=63)
        policy.observe("r", num_verified=2, num_accepted=0)
    assert policy.choose_lengths([with_drafts("r", [0.9, 0.9])], budget_left=63) == {"r": 2}
    report = policy.calibrator.report()
    assert report.observations == 200 and report.mean_realised == 0.0
