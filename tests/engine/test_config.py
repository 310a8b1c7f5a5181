"""engine/config.py: configurations refuse what the engine cannot run."""
from __future__ import annotations

import pytest

from engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig, SpeculativeConfig


def test_model_config_checks_its_geometry():
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(vocab_size=10, hidden_size=8, intermediate_size=16, num_layers=1, num_heads=3,
                    num_kv_heads=2, head_dim=4)
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig(vocab_size=10, hidden_size=0, intermediate_size=16, num_layers=1, num_heads=2,
                    num_kv_heads=2, head_dim=4)


def test_cache_and_scheduler_limits_must_be_positive():
    assert CacheConfig(block_size=4, num_blocks=3).num_tokens == 12
    with pytest.raises(ValueError):
        CacheConfig(block_size=0)
    with pytest.raises(ValueError):
        SchedulerConfig(max_num_seqs=0)
    with pytest.raises(ValueError):
        SchedulerConfig(max_model_len=1)


def test_speculation_is_on_only_with_a_method_and_a_policy():
    assert not SpeculativeConfig().enabled
    assert SpeculativeConfig(method="ngram").enabled
    assert not SpeculativeConfig(method="ngram", policy="off").enabled
    with pytest.raises(ValueError, match="num_speculative_tokens"):
        SpeculativeConfig(method="ngram", num_speculative_tokens=0)
    with pytest.raises(ValueError, match="ngram_min"):
        SpeculativeConfig(method="ngram", ngram_min=3, ngram_max=2)


def test_engine_config_rejects_an_unknown_dtype():
    assert EngineConfig(model="m", dtype="bfloat16").dtype == "bfloat16"
    with pytest.raises(ValueError, match="dtype"):
        EngineConfig(model="m", dtype="int8")
