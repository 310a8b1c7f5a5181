"""Step-cost model, confidence calibration and the verification policies (plain Python)."""
from __future__ import annotations

import random

import pytest

from scheduler.calibration import ConfidenceCalibrator
from scheduler.load import StepCostModel, probe_sizes
from scheduler.request import Request, SamplingParams
from scheduler.drafts import DraftBlock
from scheduler.policies import AdaptivePolicy, StaticPolicy
from scheduler.policies.adaptive import DraftingBackoff


def test_step_cost_is_monotone_and_interpolates():
    cost = StepCostModel([1, 2, 4, 8], [0.10, 0.08, 0.12, 0.20])  # a noisy dip at B=2
    assert cost.step_seconds(2) == pytest.approx(0.10)  # the dip is flattened
    assert cost.step_seconds(6) == pytest.approx(0.16)
    assert cost.step_seconds(16) == pytest.approx(0.36)  # last slope extrapolated
    sps = [cost.sps(b) for b in range(1, 20)]
    assert all(a >= b for a, b in zip(sps, sps[1:]))


def test_step_cost_observe_moves_towards_measurements_and_round_trips():
    cost = StepCostModel([1, 8], [0.1, 0.2], ema=0.5)
    for _ in range(20):
        cost.observe(8, 0.4)
    assert cost.step_seconds(8) == pytest.approx(0.4, rel=0.01)
    again = StepCostModel.from_json(cost.to_json())
    assert again.step_seconds(8) == pytest.approx(cost.step_seconds(8))
    with pytest.raises(ValueError):
        StepCostModel([2, 1], [0.1, 0.1])


def test_probe_sizes_are_bounded():
    assert probe_sizes(10) == [1, 2, 3, 4, 6, 8]
    assert max(probe_sizes(512)) == 512


def simulate(calibrator: ConfidenceCalibrator, rng: random.Random, true_rate, raw: float, steps: int):
    for step in range(steps):
        rid = f"r{step % 7}"
        predicted = calibrator.calibrate(rid, [raw] * 4)
        accepted = 0
        while accepted < 4 and rng.random() < true_rate(accepted):
            accepted += 1
        calibrator.observe(rid, [raw] * 4, predicted, accepted)


def test_calibration_learns_realised_acceptance_per_position():
    rng = random.Random(0)
    calibrator = ConfidenceCalibrator()
    true_rate = lambda position: [0.9, 0.6, 0.4, 0.2][position]  # noqa: E731
    simulate(calibrator, rng, true_rate, raw=0.5, steps=4000)
    learned = calibrator.calibrate("fresh", [0.5] * 4)
    assert learned == pytest.approx([0.9, 0.6, 0.4, 0.2], abs=0.06)
    report = calibrator.report()
    assert report.observations > 4000
    assert abs(report.mean_predicted - report.mean_realised) < 0.05


def test_calibrated_predictions_beat_raw_confidences():
    rng = random.Random(1)
    calibrator = ConfidenceCalibrator()
    simulate(calibrator, rng, lambda p: 0.3, raw=0.9, steps=3000)
    late = ConfidenceCalibrator()
    late.bins = calibrator.bins  # the learned map, fresh report
    simulate(late, rng, lambda p: 0.3, raw=0.9, steps=500)
    assert late.report().expected_calibration_error < 0.1 < abs(0.9 - 0.3)


def make_request(rid: str, confidences: list[float]) -> Request:
    request = Request(rid, [1, 2, 3], SamplingParams(temperature=0.0))
    request.drafts = DraftBlock(list(range(len(confidences))), list(confidences))
    return request


def test_adaptive_policy_long_when_idle_short_when_busy():
    requests = [make_request("sure", [0.95] * 6), make_request("unsure", [0.2] * 6)]
    idle = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=64)
    assert idle.choose_lengths(requests, 62, num_emitting=2) == {"sure": 6, "unsure": 6}
    busy = AdaptivePolicy(StepCostModel.linear(0.05, 0.02), max_batched_tokens=64)
    lengths = busy.choose_lengths(requests, 62, num_emitting=2)
    assert lengths["sure"] >= 3 and lengths["unsure"] == 0
    swamped = AdaptivePolicy(StepCostModel.linear(0.0, 1.0), max_batched_tokens=64)
    assert swamped.choose_lengths(requests, 62, num_emitting=2) == {"sure": 0, "unsure": 0}
    assert sum(busy.lengths.counts) == 2


def test_adaptive_policy_feeds_back_and_trims_draft_length():
    policy = AdaptivePolicy(StepCostModel.flat(), max_batched_tokens=64)
    request = make_request("r", [0.5] * 4)
    for _ in range(200):
        assert policy.choose_lengths([request], 60, num_emitting=1)["r"] == 4
        policy.observe("r", 4, 0)  # every first draft rejected
    assert policy.calibrator.calibrate("other", [0.5])[0] < 0.1
    assert policy.draft_length("r", 8) == 5
    policy.forget("r")
    assert "r" not in policy.last_length


def test_static_policy_caps_at_k_and_budget():
    requests = [make_request("a", [0.5] * 6), make_request("b", [0.5] * 2)]
    assert StaticPolicy(4).choose_lengths(requests, 5) == {"a": 4, "b": 1}


def test_outside_load_at_one_size_does_not_bend_the_shape():
    cost = StepCostModel([1, 8, 16], [0.06, 0.13, 0.16])
    shape_before = cost.step_seconds(16) / cost.step_seconds(8)
    for _ in range(50):  # another process slows every step measured at B=8 by 2x
        cost.observe(8, 0.26)
    assert cost.step_seconds(8) == pytest.approx(0.26, rel=0.05)
    assert cost.step_seconds(16) / cost.step_seconds(8) == pytest.approx(shape_before, rel=0.1)


def test_drafting_backs_off_when_drafts_do_not_pay_and_resumes_on_acceptance():
    policy = AdaptivePolicy(StepCostModel.linear(0.0, 1.0), max_batched_tokens=64)
    request = make_request("r", [0.3] * 2)
    skipped = []
    for _ in range(40):
        if policy.should_draft("r"):
            assert policy.choose_lengths([request], 63, num_emitting=1)["r"] == 0
            skipped.append(0)
        else:
            skipped.append(1)
    assert sum(skipped) > 30  # backoff grew to 16 steps
    policy.observe("r", 2, 1)
    assert policy.should_draft("r")


def test_short_requests_keep_trying_after_a_streak_of_failures():
    """Each new request drafts on its first step even after every earlier
    one failed (a pause it inherited could outlive it, and then nothing would
    ever draft again); after failing it pauses as long as the latest one did."""
    backoff = DraftingBackoff()
    for step in range(8):  # failing streak of one long request
        if backoff.should_draft("long"):
            backoff.failed("long")
    for name in ["short-1", "short-2", "short-3"]:  # two-step requests
        assert backoff.should_draft(name)
        backoff.failed(name)
        assert not backoff.should_draft(name)
        backoff.forget(name)
    assert backoff.should_draft("short-4")
    backoff.paid("short-4")  # an acceptance resets the level for newcomers
    assert backoff.should_draft("short-5")
    backoff.failed("short-5")
    assert [backoff.should_draft("short-5") for _ in range(2)] == [False, True]  # a one-step pause


def test_token_ids_slices_like_all_token_ids():
    request = Request("r", [1, 2, 3, 4], SamplingParams())
    request.output_token_ids = [5, 6, 7]
    for start in range(0, 8):
        for end in [None] + list(range(start, 9)):
            assert request.token_ids(start, end) == request.all_token_ids[start:end]
