"""engine/engine.py: the step loop's own duties (prompt checks, request
lifecycle, abort, statistics); token-for-token losslessness is in
test_speculative.py and test_statistical_lossless.py."""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

GREEDY = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny"), seed=1)


def make_engine(model_dir, method="none", num_blocks=64):
    config = EngineConfig(model=model_dir, dtype="float32", cache=CacheConfig(block_size=8, num_blocks=num_blocks),
                          scheduler=SchedulerConfig(max_num_seqs=4, max_model_len=64),
                          speculative=SpeculativeConfig(method=method, policy="static"))
    return LLMEngine(config, step_cost=StepCostModel.flat())


def run(engine):
    outputs = []
    while engine.has_unfinished():
        outputs += engine.step()
    return outputs


def test_prompts_the_engine_can_never_serve_are_refused(model_dir):
    engine = make_engine(model_dir, num_blocks=2)
    with pytest.raises(ValueError, match="empty"):
        engine.validate_prompt([], GREEDY)
    with pytest.raises(ValueError, match="context"):
        engine.validate_prompt([5] * 64, GREEDY)
    with pytest.raises(ValueError, match="KV cache"):
        engine.validate_prompt([5] * 16, GREEDY)  # 2 blocks of 8 hold 16 tokens, one output needs a 17th
    with pytest.raises(ValueError, match="vocabulary"):
        engine.validate_prompt([5, engine.model_config.vocab_size], GREEDY)


def test_a_request_streams_its_tokens_and_finishes_once(model_dir):
    engine = make_engine(model_dir)
    engine.add_request("a", [5, 6, 7], GREEDY)
    with pytest.raises(ValueError, match="duplicate"):
        engine.add_request("a", [5], GREEDY)
    outputs = run(engine)
    assert sum(len(out.new_token_ids) for out in outputs) == 8
    assert [out.finished for out in outputs].count(True) == 1 and outputs[-1].finish_reason == "length"
    assert "a" not in engine.requests and engine.scheduler.kv_usage == 0.0


def test_abort_frees_the_request_at_once(model_dir):
    engine = make_engine(model_dir)
    engine.add_request("a", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.scheduler.kv_usage > 0
    assert engine.abort_request("a") and not engine.abort_request("a")
    assert engine.scheduler.kv_usage == 0.0 and not engine.has_unfinished()


def test_statistics_count_prompt_generation_and_speculation(model_dir):
    engine = make_engine(model_dir, method="ngram")
    engine.generate([[5, 6, 7, 5, 6, 7, 5, 6]], GREEDY)
    stats = engine.snapshot_stats()
    assert stats.prompt_tokens == 8 and stats.generation_tokens == 8 and stats.num_steps > 0
    assert stats.num_drafts > 0 and stats.num_accepted_tokens <= stats.num_draft_tokens
    assert sum(stats.policy.verify_length_counts) > 0
    assert (stats.num_running, stats.num_waiting) == (0, 0)


def test_a_handed_in_model_runs_in_its_own_dtype(model_dir, monkeypatch):
    """`auto` on a bfloat16-native host must not give a float32 model a
    bfloat16 KV cache (decoding would round every key and value); an
    explicit dtype that disagrees with the weights is refused."""
    import torch

    from engine import engine as engine_module
    from engine.models.loader import load_model

    loaded = load_model(str(model_dir), torch.float32)
    monkeypatch.setattr(engine_module, "resolve_dtype", lambda name, device: torch.bfloat16)
    engine = LLMEngine(EngineConfig(model=str(model_dir), cache=CacheConfig(block_size=16, num_blocks=32)),
                       loaded=loaded, step_cost=StepCostModel.flat())
    assert all(cache.dtype == torch.float32 for layer in engine.runner.kv_caches for cache in layer)
    with pytest.raises(ValueError, match="bfloat16 requested for a model loaded in torch.float32"):
        LLMEngine(EngineConfig(model=str(model_dir), dtype="bfloat16"), loaded=loaded, step_cost=StepCostModel.flat())
