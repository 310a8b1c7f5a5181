"""Speculation stays lossless in bfloat16: with batch-invariant kernels, greedy
outputs with every drafter and policy equal plain decoding, one request at
a time and sixteen at once. (tests/engine/test_speculative.py covers the
rest of the contract in float32.)"""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

TOPICS = ["caches", "trees", "rivers", "compilers", "tea", "maps", "clocks", "bees",
          "lamps", "boats", "codes", "stars", "roads", "bread", "wind", "glass"]
PROMPTS = [f"def {t}(x):\n    return x + 1\n\ndef {t}(x):" if i % 2 else
           f"Tell me about {t}. The {t} are {t} and the {t} are" for i, t in enumerate(TOPICS)]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)
# A cost curve where extra tokens cost: the adaptive policy then varies the
# verification length per request and step, so rows move between batch shapes.
# The random draft model's drafts are too unlikely to pay on it (the policy
# then verifies none), so that drafter gets a gentler slope.
BUSY = StepCostModel.linear(0.01, 0.004)
GENTLE = StepCostModel.linear(0.01, 0.0005)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("bf16-target"), hidden_size=128, num_heads=4,
                               num_kv_heads=2, num_layers=2, seed=3)


@pytest.fixture(scope="module")
def draft_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("bf16-draft"), hidden_size=64, seed=11, num_layers=1)


def make_engine(model_dir, method="none", policy="static", draft_model=None, batch_invariant=True):
    config = EngineConfig(
        model=str(model_dir), dtype="bfloat16", batch_invariant=batch_invariant, machine_counters=False,
        cache=CacheConfig(block_size=8, num_blocks=400),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=96, max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=5, draft_model=draft_model,
                                      self_draft_layers=1 if method == "self-draft" else 0, policy=policy))
    return LLMEngine(config, step_cost=GENTLE if method == "draft-model" else BUSY)


@pytest.fixture(scope="module")
def reference(model_dir):
    """Plain bf16 decoding, one request at a time."""
    engine = make_engine(model_dir)
    return [engine.generate([engine.tokenizer.encode(p)], GREEDY)[0] for p in PROMPTS]


def run_alone_and_together(engine):
    prompts = [engine.tokenizer.encode(p) for p in PROMPTS]
    alone = [engine.generate([p], GREEDY)[0] for p in prompts]
    together = engine.generate(prompts, GREEDY)
    return alone, together


def test_plain_decoding_alone_equals_sixteen_at_once(model_dir, reference):
    engine = make_engine(model_dir)
    assert engine.loaded.model.batch_invariant
    together = engine.generate([engine.tokenizer.encode(p) for p in PROMPTS], GREEDY)
    assert together == reference


@pytest.mark.parametrize("policy", ["static", "adaptive"])
@pytest.mark.parametrize("method", ["ngram", "self-draft", "draft-model"])
def test_speculation_equals_plain_decoding_in_bf16(model_dir, draft_dir, reference, method, policy):
    engine = make_engine(model_dir, method, policy, draft_model=str(draft_dir) if method == "draft-model" else None)
    alone, together = run_alone_and_together(engine)
    assert engine.stats.num_drafts > 0
    if method == "ngram":  # the prompts repeat themselves: some drafts are accepted
        assert engine.stats.num_accepted_tokens > 0
    assert alone == reference
    assert together == reference
    engine.scheduler.block_manager.check_integrity()
