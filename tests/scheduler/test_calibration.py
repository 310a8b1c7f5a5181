"""scheduler/calibration.py: raw confidences become survival probabilities
that match realised acceptance, per position and per request."""
from __future__ import annotations

from scheduler.calibration import ConfidenceCalibrator


def test_without_evidence_the_raw_confidence_stands():
    assert ConfidenceCalibrator().calibrate("r", [0.75, 0.35]) == [0.75, 0.35]


def test_an_overconfident_drafter_is_corrected_towards_what_was_accepted():
    calibrator = ConfidenceCalibrator(decay=1.0)
    for i in range(200):  # claims 0.95 at position 0, survives a quarter of the time
        calibrator.observe(f"r{i}", [0.95], [0.95], num_accepted=int(i % 4 == 0))
    assert abs(calibrator.calibrate("new", [0.95])[0] - 0.25) < 0.05
    report = calibrator.report()
    assert report.observations == 200 and report.expected_calibration_error > 0.6


def test_only_positions_up_to_the_first_rejection_are_observed():
    calibrator = ConfidenceCalibrator(decay=1.0)
    calibrator.observe("r", [0.5, 0.5, 0.5], [0.5, 0.5, 0.5], num_accepted=1)
    assert calibrator.report().observations == 2  # position 1 accepted, 2 rejected, 3 unseen


def test_a_request_that_beats_its_predictions_is_trusted_more_until_forgotten():
    calibrator = ConfidenceCalibrator(decay=1.0)
    for _ in range(10):
        calibrator.observe("lucky", [0.5], [0.5], num_accepted=1)
    boosted = calibrator.calibrate("lucky", [0.5])[0]
    assert boosted > calibrator.calibrate("other", [0.5])[0]
    calibrator.forget("lucky")
    assert calibrator.calibrate("lucky", [0.5]) == calibrator.calibrate("other", [0.5])
