"""--num-speculative-tokens k against what each method can draft per step.

Heads draft at most their block: a larger k is clamped when the engine
starts, with a log line. n-gram, draft-model and self-draft have no block:
k is honoured. For every method and k in {1, block, block + 1, 16} the
engine starts, drafts no more than its limit, and serves greedy and seeded
requests exactly as plain decoding.
"""
from __future__ import annotations

import logging

import pytest

from engine.engine import LLMEngine
from engine.spec.heads.registry import HEAD_METHODS
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.engine.lossless_harness import (  # noqa: F401 (fixtures)
    HEAD_BLOCK, draft_models, engine_config, head_checkpoints, vocab_datastore, vocab_draft_dir, vocab_target, vocab_target_dir)

METHODS = ("ngram", "draft-model", "self-draft", *HEAD_METHODS)
PROMPTS = [[3, 1, 3, 0, 3, 1, 3], [0, 1, 2, 3], [2, 2, 3]]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True),
          SamplingParams(temperature=1.0, seed=5, max_tokens=24, ignore_eos=True),
          SamplingParams(temperature=0.8, top_k=3, seed=6, max_tokens=24, ignore_eos=True)]


def make_engine(target, method: str, k: int, draft_models) -> LLMEngine:
    config = engine_config(target, method, "static", draft_models.get(method), k, max_num_seqs=8)
    return LLMEngine(config, loaded=target, step_cost=StepCostModel.flat())


@pytest.fixture(scope="module")
def plain_outputs(vocab_target, draft_models):
    return make_engine(vocab_target, "none", 1, draft_models).generate(PROMPTS, PARAMS)


@pytest.mark.parametrize("k", [1, HEAD_BLOCK, HEAD_BLOCK + 1, 16])
@pytest.mark.parametrize("method", METHODS)
def test_k_is_honoured_or_clamped_to_the_block(vocab_target, draft_models, plain_outputs, caplog, method, k):
    with caplog.at_level(logging.WARNING, logger="specserve.engine"):
        engine = make_engine(vocab_target, method, k, draft_models)
    limit = min(k, HEAD_BLOCK) if method in HEAD_METHODS else k
    assert engine.scheduler.drafting.max_tokens == limit
    assert (f"using {limit}" in caplog.text) == (limit < k)
    assert engine.generate(PROMPTS, PARAMS) == plain_outputs
    lengths = engine.verify_policy.stats().verify_length_counts
    longest = max(length for length, count in enumerate(lengths) if count)
    assert 1 <= longest <= limit
    if method != "ngram":  # sampled drafters always fill what they may draft
        assert longest == limit
