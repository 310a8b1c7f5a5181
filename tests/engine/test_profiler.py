"""engine/profiler.py: the start-up step-cost profile, cached per model,
device, dtype and kernels."""
from __future__ import annotations

import os

import pytest
import torch

from engine.model_runner import ModelRunner
from engine.models.loader import load_model
from engine.profiler import decode_shaped_batch, load_or_profile, profile_cache_path, profile_step_cost
from tests.tiny_model import make_tiny_model_dir


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    loaded = load_model(make_tiny_model_dir(tmp_path_factory.mktemp("tiny")))
    return ModelRunner(loaded.model, loaded.config, num_blocks=64, block_size=16, dtype=torch.float32,
                       device="cpu")


def test_decode_shaped_batches_spread_tokens_over_requests_behind_context():
    tokens, positions, meta = decode_shaped_batch(10, max_seqs=4, block_size=16, num_blocks=64, device="cpu")
    assert tokens.shape == (10,) and positions.shape == (10,)
    assert meta.query_lens == [3, 3, 2, 2] and meta.seq_lens_list == [131, 131, 130, 130]
    assert decode_shaped_batch(10, max_seqs=4, block_size=16, num_blocks=4, device="cpu") is None  # no room


def test_the_profile_covers_the_probe_sizes_that_fit(runner):
    cost = profile_step_cost(runner, max_tokens=32, max_seqs=4, time_budget_s=30.0, passes=1)
    assert cost.sizes[0] == 1 and cost.sizes[-1] <= 32
    assert all(seconds > 0 for seconds in cost.seconds)


def test_the_cache_key_separates_kernels_and_the_profile_is_reused(runner, tmp_path, monkeypatch):
    monkeypatch.setenv("SPECSERVE_CACHE_DIR", str(tmp_path))
    assert profile_cache_path("m", "cpu", "float32", 64, "a") != profile_cache_path("m", "cpu", "float32", 64, "b")
    first = load_or_profile(runner, "model-x", "cpu", "float32", 16, 2, time_budget_s=10.0)
    path = profile_cache_path("model-x", "cpu", "float32", 16, runner.model.kernel_description)
    assert os.path.exists(path)
    second = load_or_profile(runner, "model-x", "cpu", "float32", 16, 2, time_budget_s=10.0)
    assert second.to_json() == first.to_json()
