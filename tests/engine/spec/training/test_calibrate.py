"""Calibration metrics and Sequential Temperature Scaling."""
from __future__ import annotations

import json
import math

import pytest
import torch

from engine.spec.training.calibrate import (DEFAULT_SHIFTS, BlockRecord, auroc, calibration_report,
                                           confidence_logits, expected_calibration_error, fit_sts,
                                           reached_positions)
from engine.spec.training.evaluate import teacher_forced_simulation
from tests.engine.spec.conftest import make_trainer, split

BLOCK = 4


def test_ece_and_auroc_on_known_cases():
    perfect = torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert expected_calibration_error(perfect, perfect.bool()) == 0
    assert expected_calibration_error(torch.full((4,), 0.9), torch.tensor([1, 0, 0, 0]).bool()) == pytest.approx(0.65)
    assert auroc(torch.tensor([0.1, 0.2, 0.8, 0.9]), torch.tensor([0, 0, 1, 1]).bool()) == 1.0


def test_sts_lowers_heldout_ece():
    """Over-confident raw confidences (true survival is lower and falls with
    position): temperatures fitted on one half calibrate the other half."""
    gen = torch.Generator().manual_seed(0)

    def records(n):
        out = []
        for _ in range(n):
            raw = torch.rand(BLOCK, generator=gen) * 0.3 + 0.7  # says 0.7..1.0
            true = 0.5 * (raw - 0.5)  # truly 0.1..0.25
            accepted = 0
            while accepted < BLOCK and torch.rand(1, generator=gen) < true[accepted]:
                accepted += 1
            out.append(BlockRecord(raw.tolist(), accepted))
        return out

    fit, held = records(2000), records(2000)
    temperatures = fit_sts(fit, BLOCK)
    before = calibration_report(held, BLOCK)["ece_survival"]
    after = calibration_report(held, BLOCK, temperatures)["ece_survival"]
    assert after < 0.5 * before, (before, after, temperatures)


def test_the_shift_corrects_a_bias_that_temperatures_cannot():
    """Raw confidences spread around 0.5 while every position is truly
    accepted 0.15 less often: a temperature pivots around 0.5 and cannot
    move the mean, so only temperature-and-shift calibrates the conditional
    confidences (and the survival products) of held-out blocks."""
    gen = torch.Generator().manual_seed(1)

    def records(n):
        out = []
        for _ in range(n):
            raw = torch.rand(BLOCK, generator=gen) * 0.4 + 0.3  # says 0.3..0.7
            accepted = 0
            while accepted < BLOCK and torch.rand(1, generator=gen) < raw[accepted] - 0.15:
                accepted += 1
            out.append(BlockRecord(raw.tolist(), accepted))
        return out

    fit, held = records(3000), records(3000)
    shifted = calibration_report(held, BLOCK, fit_sts(fit, BLOCK, shifts=DEFAULT_SHIFTS))
    temperatures_only = calibration_report(held, BLOCK, fit_sts(fit, BLOCK))
    assert all(shift == 0.0 for _, shift in fit_sts(fit, BLOCK))
    assert shifted["ece_conditional"] < 0.03 < 0.08 < temperatures_only["ece_conditional"], \
        (shifted["ece_conditional"], temperatures_only["ece_conditional"])
    assert shifted["ece_survival"] < temperatures_only["ece_survival"]


def test_the_default_calibration_keeps_confidences_apart():
    """Confidences that tell drafts apart, over-confident (true logit =
    0.5 x raw logit - 0.8, so 0.12..0.76 accepted). Log-loss keeps their
    spread. ECE alone prefers flattening: a constant at the base rate has
    an ECE of zero where the true curve shows its sampling noise, and the
    ECE search with a shift squeezes position 1 to a spread of 0.09."""
    from engine.spec.training.calibrate import confidence_logits, fit_logistic, scaled_logits

    gen = torch.Generator().manual_seed(4)
    records = []
    for _ in range(800):
        raw = torch.rand(BLOCK, generator=gen) * 0.96 + 0.02
        true = torch.sigmoid(0.5 * torch.logit(raw) - 0.8)
        accepted = 0
        while accepted < BLOCK and torch.rand(1, generator=gen) < true[accepted]:
            accepted += 1
        records.append(BlockRecord(raw.tolist(), accepted))
    fitted = fit_logistic(records, BLOCK)
    logits, _, _ = confidence_logits(records, BLOCK)
    first = torch.sigmoid(scaled_logits(logits, fitted))[:, 0]
    assert float(first.max() - first.min()) > 0.6, fitted
    assert calibration_report(records, BLOCK, fitted)["ece_conditional"] < 0.05


def test_ece_counts_every_bin_by_its_share():
    predicted = torch.tensor([0.05, 0.05, 0.55, 0.55, 0.95])
    observed = torch.tensor([0, 1, 1, 1, 1]).bool()
    # bins: 0 -> |0.05 - 0.5| * 2, 5 -> |0.55 - 1| * 2, 9 -> |0.95 - 1| * 1
    assert expected_calibration_error(predicted, observed) == pytest.approx((0.9 + 0.9 + 0.05) / 5)


def test_sts_on_a_trained_head_lowers_heldout_ece(tiny_target, feature_set):
    trainer = make_trainer(tiny_target, feature_set, "dspark", BLOCK, steps=30)
    trainer.run()
    _, held = split(feature_set)
    train_records = teacher_forced_simulation(trainer.head, split(feature_set)[0]).records
    held_records = teacher_forced_simulation(trainer.head, held).records
    temperatures = fit_sts(train_records, BLOCK)
    before = calibration_report(held_records, BLOCK)["ece_survival"]
    after = calibration_report(held_records, BLOCK, temperatures)["ece_survival"]
    assert after < before, (before, after)


def test_sts_keeps_the_previous_temperature_without_evidence():
    """Nothing ever survives past position 2: STS must not sharpen the
    later confidences towards 1 to 'fit' all-zero labels."""
    records = [BlockRecord([0.9, 0.6, 0.6, 0.6], min(i % 3, 2)) for i in range(300)]
    temperatures = fit_sts(records, BLOCK)
    assert temperatures[2] == temperatures[3] == temperatures[1]


def test_head_drafter_uses_the_set_fitted_for_the_requests_temperature(tiny_target):
    """Greedy requests get the T=0 temperatures, sampled ones the T=1 set."""
    from engine.spec.heads.drafting import scale_confidence
    from tests.engine.spec.conftest import absorb_and_propose, random_sequence, target_features
    from tests.engine.spec.test_head_drafter import make_drafter, request_at
    from scheduler.request import SamplingParams

    sets = {"0": [0.5, 0.5, 0.5, 0.5, 0.5], "1": [3.0, 3.0, 3.0, 3.0, 3.0]}
    tokens = random_sequence(30, seed=6)
    raw_drafter = make_drafter(tiny_target, "eagle3")
    feats, _ = target_features(tiny_target, tokens, raw_drafter.aux_layers)
    for temperature, key in ((0.0, "0"), (1.0, "1"), (0.8, "1"), (0.2, "0")):
        params = SamplingParams(temperature=temperature, seed=1)
        raw = absorb_and_propose(make_drafter(tiny_target, "eagle3"), request_at("r", tokens, 12, params),
                                 feats[:12], 5)["r"]
        scaled = absorb_and_propose(make_drafter(tiny_target, "eagle3", calibration=sets),
                                    request_at("r", tokens, 12, params), feats[:12], 5)["r"]
        assert scaled.token_ids == raw.token_ids
        assert scaled.confidences == pytest.approx([scale_confidence(c, sets[key][0]) for c in raw.confidences])


def test_head_drafter_serves_a_peak_map_calibration(tiny_target):
    """DSpark with {"confidence", "peak", "bias"} entries: the served
    confidences are the raw ones mapped with each draft's peak."""
    from engine.spec.heads.drafting import scale_confidence
    from tests.engine.spec.conftest import absorb_and_propose, random_sequence, target_features
    from tests.engine.spec.test_head_drafter import make_drafter, request_at
    from scheduler.request import SamplingParams

    entries = [{"confidence": 0.3 + 0.1 * k, "peak": 1.0 - 0.1 * k, "bias": -0.2} for k in range(5)]
    tokens = random_sequence(30, seed=7)
    raw_drafter = make_drafter(tiny_target, "dspark")
    feats, _ = target_features(tiny_target, tokens, raw_drafter.aux_layers)
    params = SamplingParams(temperature=0.0)
    raw = absorb_and_propose(raw_drafter, request_at("r", tokens, 12, params), feats[:12], 5)["r"]
    served = absorb_and_propose(make_drafter(tiny_target, "dspark", calibration={"0": entries}),
                                request_at("r", tokens, 12, params), feats[:12], 5)["r"]
    assert served.token_ids == raw.token_ids and served.peaks == pytest.approx(raw.peaks)
    assert served.confidences == pytest.approx([scale_confidence(c, e, p)
                                                for c, e, p in zip(raw.confidences, entries, raw.peaks)])


def test_a_calibration_entry_is_a_temperature_a_temperature_and_a_shift_or_a_peak_map():
    from engine.spec.heads.config import PositionMap, position_map
    from engine.spec.heads.drafting import scale_confidence

    assert position_map(2.0) == PositionMap(0.5, 0.0, 0.0) and position_map([2.0, -0.5]) == PositionMap(0.5, 0.0, -0.5)
    assert position_map({"confidence": 0.2, "peak": 0.7, "bias": -0.8}) == PositionMap(0.2, 0.7, -0.8)
    assert scale_confidence(0.5, [1.0, 0.0]) == pytest.approx(0.5)
    assert scale_confidence(0.5, [1.0, -1.0]) == pytest.approx(1 / (1 + math.e))
    assert scale_confidence(0.8, 2.0) == pytest.approx(scale_confidence(0.8, [2.0, 0.0]))
    peak_map = {"confidence": 0.5, "peak": 2.0, "bias": 0.0}
    assert scale_confidence(0.5, peak_map, peak=0.5) == pytest.approx(0.5)
    assert scale_confidence(0.5, peak_map, peak=0.9) == pytest.approx(1 / (1 + 9.0 ** -2))
    with pytest.raises(ValueError, match="peak"):
        scale_confidence(0.5, peak_map)  # a map that reads the peak never silently drops it
    for bad in ([1.0], [0.0, 0.1], -1.0, "1", [1.0, float("nan")], True, {"confidence": 1.0, "bias": 0.0},
                {"confidence": 1.0, "peak": float("inf"), "bias": 0.0}, {"confidence": 1, "peak": 0, "bias": "0"}):
        with pytest.raises(ValueError):
            position_map(bad)


def peaked_records(n: int, seed: int, block: int = 3) -> list:
    """Survival follows the draft distribution's peak; the confidence is
    half peak, half noise."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        peaks = (torch.rand(block, generator=gen) * 0.85 + 0.1).tolist()
        noise = (torch.rand(block, generator=gen) * 0.8 + 0.1).tolist()
        accepted = 0
        while accepted < block and float(torch.rand(1, generator=gen)) < peaks[accepted]:
            accepted += 1
        out.append(BlockRecord([(p + q) / 2 for p, q in zip(peaks, noise)], accepted, peaks))
    return out


def test_logistic_peak_reads_the_peak_where_it_predicts_survival():
    """Out of sample: a lower conditional log-loss than the confidence alone,
    calibrated, with the peak weighted above the confidence."""
    from engine.spec.training.calibrate import fit_calibration, peak_logits, scaled_logits

    fit, check = peaked_records(3000, 0), peaked_records(3000, 1)
    logits, drafted, survived = confidence_logits(check, 3)
    reached = reached_positions(drafted, survived)

    def log_loss(calibration) -> float:
        p = torch.sigmoid(scaled_logits(logits, calibration, peak_logits(check, 3)))[reached].clamp(1e-6, 1 - 1e-6)
        y = survived[reached].double()
        return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())

    peak_maps = fit_calibration("logistic-peak", fit, 3)
    assert all(set(entry) == {"confidence", "peak", "bias"} and entry["peak"] > entry["confidence"]
               for entry in peak_maps), peak_maps
    assert log_loss(peak_maps) < log_loss(fit_calibration("logistic", fit, 3)) - 0.05
    assert calibration_report(check, 3, peak_maps)["ece_conditional"] < 0.03


def test_logistic_peak_needs_peaks_that_are_not_the_confidences():
    from engine.spec.training.calibrate import fit_logistic_peak, scaled_logits

    records = peaked_records(200, 2)
    with pytest.raises(ValueError, match="records with peaks"):
        fit_logistic_peak([BlockRecord(r.confidences, r.num_accepted) for r in records], 3)
    with pytest.raises(ValueError, match="confidence head"):
        fit_logistic_peak([BlockRecord(r.peaks, r.num_accepted, r.peaks) for r in records], 3)
    logits = confidence_logits(records, 3)[0]
    with pytest.raises(ValueError, match="peaks"):
        scaled_logits(logits, [{"confidence": 1.0, "peak": 1.0, "bias": 0.0}] * 3)


def test_records_round_trip_as_rows_with_and_without_peaks():
    from engine.spec.training.calibrate import load_records, record_row

    records = [BlockRecord([0.5, 0.25], 1), BlockRecord([0.5], 0, [0.75])]
    rows = json.loads(json.dumps([record_row(r) for r in records]))
    assert rows == [[[0.5, 0.25], 1], [[0.5], 0, [0.75]]] and load_records(rows) == records


def test_a_head_config_refuses_a_malformed_calibration(tiny_target):
    from tests.engine.spec.conftest import make_head

    config = make_head("dspark", tiny_target, 3).config
    config.calibration = {"0": [[1.0, 0.2], 1.5, [2.0, -0.1]]}
    config.__post_init__()  # a mix of bare temperatures and pairs is valid
    for bad in ({"0": [[1.0, 0.2], 1.5]}, {"0": [[1.0, 0.2], 1.5, [0.0, 1.0]]}, {"x": [1.0, 1.0, 1.0]}):
        config.calibration = bad
        with pytest.raises(ValueError):
            config.__post_init__()


def test_sts_is_fitted_per_temperature_and_checked_out_of_sample(tiny_target, feature_set):
    from engine.spec.training.calibrate import calibrate_per_temperature
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head, split

    _, held = split(feature_set)
    head = make_head("dspark", tiny_target, 3)
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(4)]
    report = calibrate_per_temperature(head, held, tiny_target, prompts, max_tokens=10)
    assert set(head.config.calibration) == {"0", "1"}
    assert all(len(entries) == 3 and all(len(e) == 2 for e in entries) for entries in head.config.calibration.values())
    for key in ("T=0", "T=1"):
        assert {"check_raw", "check_sts", "tau_fit_half", "tau_check_half"} <= set(report[key])
        assert report[key]["check_sts"]["blocks"] > 0 and report[key]["tau_check_half"] >= 1.0


def test_batched_calibration_errors_equal_one_at_a_time():
    from engine.spec.training.calibrate import calibration_errors

    gen = torch.Generator().manual_seed(3)
    predicted = torch.rand(5, 400, generator=gen, dtype=torch.float64)
    observed = torch.rand(400, generator=gen) < 0.4
    assert calibration_errors(predicted, observed).tolist() == \
        pytest.approx([expected_calibration_error(row, observed) for row in predicted], abs=1e-12)


def test_calibration_methods_are_one_for_both_temperatures_or_one_each():
    from engine.spec.training.calibrate import calibration_methods, methods_label

    assert calibration_methods("logistic") == {"0": "logistic", "1": "logistic"}
    mixed = calibration_methods("1=logistic, 0=logistic-peak")
    assert mixed == {"0": "logistic-peak", "1": "logistic"}
    assert methods_label(mixed) == "0=logistic-peak,1=logistic" and methods_label(calibration_methods("sts")) == "sts"
    for bad in ("0=logistic", "0=logistic,2=sts", "0=logistic,1=nope", "nope", "0=sts,1=sts,0=sts"):
        with pytest.raises(ValueError):
            calibration_methods(bad)
