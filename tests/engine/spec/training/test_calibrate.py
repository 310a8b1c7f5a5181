"""Calibration metrics and Sequential Temperature Scaling."""
from __future__ import annotations

import pytest
import torch

from engine.spec.training.calibrate import (BlockRecord, auroc, calibration_report,
                                           expected_calibration_error, fit_sts)
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


def test_sts_is_fitted_per_temperature_and_checked_out_of_sample(tiny_target, feature_set):
    from engine.spec.training.calibrate import calibrate_per_temperature
    from engine.spec.training.data import Prompt
    from tests.engine.spec.conftest import make_head, split

    _, held = split(feature_set)
    head = make_head("dspark", tiny_target, 3)
    prompts = [Prompt("toy", f"toy/{i}", f"Tell me about fox {i}.") for i in range(4)]
    report = calibrate_per_temperature(head, held, tiny_target, prompts, max_tokens=10)
    assert set(head.config.calibration) == {"0", "1"}
    assert all(len(t) == 3 for t in head.config.calibration.values())
    for key in ("T=0", "T=1"):
        assert {"check_raw", "check_sts", "tau_fit_half", "tau_check_half"} <= set(report[key])
        assert report[key]["check_sts"]["blocks"] > 0 and report[key]["tau_check_half"] >= 1.0
