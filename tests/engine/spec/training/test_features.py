"""Cached target features: computed once, reused, and consistent with the target."""
from __future__ import annotations

import pytest
import torch

from engine.spec.training import features as features_module
from engine.spec.training.features import collect_features


def test_features_are_cached_and_reused(tiny_target, samples, feature_set, feature_dir, monkeypatch):
    assert len(feature_set) == len(samples)
    assert feature_set.aux[0].shape == (len(samples[0].tokens), 3 * tiny_target.config.hidden_size)
    assert feature_set.aux[0].dtype == torch.float16
    monkeypatch.setattr(features_module, "_forward", lambda *a, **k: pytest.fail("recomputed"))
    again = collect_features(tiny_target, samples, (1, 2, 3), feature_dir, progress=False)
    assert torch.equal(again.aux[5], feature_set.aux[5])
    two = again.select_layers((3, 1))
    h = tiny_target.config.hidden_size
    assert torch.equal(two.aux[0], torch.cat([feature_set.aux[0][:, 2 * h:], feature_set.aux[0][:, :h]], 1))


def test_features_match_the_final_hidden_the_target_samples_from(tiny_target, samples, feature_set):
    """The cached final states reproduce the target's greedy choices."""
    logits = tiny_target.model.compute_logits(feature_set.final[2].float())
    prompt_len = feature_set.prompt_lens[2]
    predicted = logits[prompt_len - 1:-1].argmax(-1)
    assert predicted.tolist() == samples[2].response_ids[: predicted.shape[0]]
