"""engine/spec/draft_model.py: a draft model (or the target's first layers)
drafts greedily what it would generate itself, rolls its KV back to the
verified tokens, and refuses a model with another vocabulary."""
from __future__ import annotations

import pytest
import torch

from engine.config import CacheConfig, EngineConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.models.loader import load_model
from engine.spec.base import DraftInput
from engine.spec.draft_model import ModelDrafter, check_same_vocabulary
from engine.spec.factory import build_drafter
from scheduler.load import StepCostModel
from scheduler.request import Request, SamplingParams
from tests.tiny_model import make_tiny_model_dir

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)


@pytest.fixture(scope="module")
def draft(tmp_path_factory):
    return load_model(make_tiny_model_dir(tmp_path_factory.mktemp("draft"), seed=11, num_layers=1))


def drafter_for(loaded):
    return ModelDrafter(loaded.model, loaded.config, num_blocks=8, block_size=8, max_draft=4,
                        dtype=torch.float32, device="cpu")


def propose(drafter, request, k):
    item = DraftInput(request, k, torch.Generator().manual_seed(0), [0, 1, 2])
    return drafter.propose([item])[request.request_id]


def test_greedy_drafts_are_the_draft_model_s_own_greedy_tokens(draft):
    prompt = [5, 6, 7, 8, 9]
    engine = LLMEngine(EngineConfig(model=draft.path, dtype="float32", cache=CacheConfig(8, 16)),
                       loaded=draft, step_cost=StepCostModel.flat())
    expected = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True))[0]
    block = propose(drafter_for(draft), Request("r", prompt, GREEDY), 4)
    assert block.token_ids == expected and block.source == "draft-model"
    assert block.probs.shape == (4, draft.config.vocab_size)
    assert all(0 < c <= 1 for c in block.confidences)


def test_after_verification_the_kv_rolls_back_to_the_verified_tokens(draft):
    drafter, request = drafter_for(draft), Request("r", [5, 6, 7, 8, 9], GREEDY)
    first = propose(drafter, request, 3)
    wrong = (first.token_ids[0] + 1) % draft.config.vocab_size
    request.append_output_token(wrong)  # the target rejected every draft and emitted another token
    again = propose(drafter, request, 3)
    fresh = propose(drafter_for(draft), Request("s", [5, 6, 7, 8, 9, wrong], GREEDY), 3)
    assert again.token_ids == fresh.token_ids
    drafter.forget(["r"])
    assert "r" not in drafter.num_computed


def test_a_draft_model_with_another_vocabulary_is_refused(tmp_path, draft):
    other = load_model(make_tiny_model_dir(tmp_path, vocab_size=300))
    with pytest.raises(ValueError, match="vocabulary"):
        check_same_vocabulary(draft, other)


def test_self_draft_runs_a_prefix_of_the_target_s_layers(tmp_path):
    target = load_model(make_tiny_model_dir(tmp_path, num_layers=3))
    config = EngineConfig(model=target.path, cache=CacheConfig(8, 16),
                          speculative=SpeculativeConfig(method="self-draft", policy="static"))
    drafter = build_drafter(config, target, 16, torch.float32)
    assert drafter.name == "self-draft" and drafter.num_layers == 1 and len(drafter.kv_caches) == 1
