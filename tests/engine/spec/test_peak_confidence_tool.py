"""tools/peak_confidence: the per-position fit recovers known maps, the
peak swap reports each draft's distribution peak and undoes itself, and
records of different steps are refused rather than paired."""
from __future__ import annotations

import pytest
import torch

from engine.spec.heads import drafting
from engine.spec.training.calibrate import BlockRecord
from engine.spec.training.evaluate import teacher_forced_simulation
from engine.spec.training.features import collect_features
from engine.spec.training.generate import Sample
from tests.engine.spec.conftest import make_head
from tools.peak_confidence import PairedRecords, fit_positions, peaks_as_confidences, predict, table


def test_fit_positions_recovers_a_two_feature_map():
    generator = torch.Generator().manual_seed(0)
    n = 20000
    features = torch.randn(2, n, 1, generator=generator, dtype=torch.float64)
    truth = torch.sigmoid(1.5 * features[0, :, 0] - 0.7 * features[1, :, 0] + 0.3)
    survived = (torch.rand(n, generator=generator, dtype=torch.float64) < truth).unsqueeze(1)
    reached = torch.ones(n, 1, dtype=torch.bool)
    weights = fit_positions(features, survived, reached)
    assert torch.allclose(weights[0], torch.tensor([1.5, -0.7, 0.3], dtype=torch.float64), atol=0.1)
    assert torch.allclose(predict(features, weights)[:, 0], truth, atol=0.05)


def test_a_position_with_few_events_reuses_the_previous_map():
    features = torch.randn(1, 200, 2, dtype=torch.float64)
    survived = features[0] > 0
    reached = torch.zeros(200, 2, dtype=torch.bool)
    reached[:, 0], reached[:5, 1] = True, True
    weights = fit_positions(features, survived, reached)
    assert weights[1] is weights[0]
    reached[:, 0] = False
    with pytest.raises(ValueError, match="position 1"):
        fit_positions(features, survived, reached)


def test_the_swap_reports_peaks_for_the_same_blocks_and_is_undone(tiny_target, samples, tmp_path):
    head = make_head("dspark", tiny_target, 4, seed=1)
    decoded = [Sample(f"toy/{i}", "toy", s.prompt_ids, s.response_ids[:24]) for i, s in enumerate(samples[:3])]
    cached = collect_features(tiny_target, decoded, head.config.aux_layers, str(tmp_path), progress=False)
    sample = drafting.DraftBatch.sample
    confidence = teacher_forced_simulation(head, cached).records
    peaks = []
    with peaks_as_confidences():
        original = drafting.DraftBatch.sample
        drafting.DraftBatch.sample = lambda self, k, logits, c: (
            peaks.append(torch.softmax(logits, -1).amax(-1).tolist()) or original(self, k, logits, c))
        peak = teacher_forced_simulation(head, cached).records
        drafting.DraftBatch.sample = original
    assert drafting.DraftBatch.sample is sample
    assert [r.num_accepted for r in peak] == [r.num_accepted for r in confidence]
    drawn_peaks = {round(p, 6) for step in peaks for p in step}
    assert all(round(c, 6) in drawn_peaks for r in peak for c in r.confidences)
    assert [r.confidences for r in peak] != [r.confidences for r in confidence]  # dspark has a confidence head


def test_records_of_different_steps_are_refused():
    with pytest.raises(ValueError, match="different blocks"):
        PairedRecords([BlockRecord([0.5, 0.5], 1)], [BlockRecord([0.5, 0.5], 2)], 2)


def test_the_table_prefers_the_informative_feature():
    generator = torch.Generator().manual_seed(1)

    def records(n):
        peak = torch.rand(n, generator=generator) * 0.9 + 0.05
        accepted = (torch.rand(n, generator=generator) < peak).long()
        noise = torch.rand(n, generator=generator) * 0.9 + 0.05
        return ([BlockRecord([float(c)], int(a)) for c, a in zip(noise, accepted)],
                [BlockRecord([float(p)], int(a)) for p, a in zip(peak, accepted)])

    fit, check = PairedRecords(*records(4000), 1), PairedRecords(*records(4000), 1)
    rows = {row.split(" | ")[0].strip("| "): row for row in table(fit, {"toy": check})[2:]}
    log_loss = {name: float(row.split(" | ")[2]) for name, row in rows.items()}
    assert log_loss["peak"] < log_loss["confidence"] - 0.05
    assert log_loss["both"] <= log_loss["confidence"]
