"""HeadConfig: family defaults, validation, JSON, and the size budget."""
from __future__ import annotations

import pytest
import torch

from engine.config import ModelConfig
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.registry import HEAD_METHODS, head_class

SMOLLM2 = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
                      num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True)


def test_default_sizes_for_smollm2_fit_the_budget():
    for method in HEAD_METHODS:
        config = HeadConfig.for_target(method, SMOLLM2)
        with torch.device("meta"):
            params = head_class(method)(config).num_own_parameters()
        assert params * 2 <= 25 * 2**20, (method, params)
    assert HeadConfig.for_target("eagle3", SMOLLM2).aux_layers == (2, 15, 27)


def test_family_defaults_then_overrides():
    assert HeadConfig.for_target("eagle3", SMOLLM2).num_layers == 1
    assert (HeadConfig.for_target("dflash", SMOLLM2).num_layers, HeadConfig.for_target("dflash", SMOLLM2).markov_rank) \
        == (2, 0)
    dspark = HeadConfig.for_target("dspark", SMOLLM2)
    assert (dspark.num_layers, dspark.markov_rank) == (2, 32)
    assert HeadConfig.for_target("dspark", SMOLLM2, num_layers=3, markov_rank=8).markov_rank == 8


def test_invalid_configs_are_refused():
    with pytest.raises(ValueError, match="unknown draft head method"):
        HeadConfig.for_target("medusa", SMOLLM2)
    with pytest.raises(ValueError, match="aux_layers"):
        HeadConfig.for_target("eagle3", SMOLLM2, aux_layers=(30,))
    with pytest.raises(ValueError, match="calibration"):
        HeadConfig.for_target("dflash", SMOLLM2, block_size=4, calibration=[1.0])


def test_json_round_trip_and_unknown_keys():
    config = HeadConfig.for_target("dspark", SMOLLM2, block_size=5, calibration=[1.0, 1.2, 0.8, 1.0, 2.0])
    assert HeadConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown head config keys"):
        HeadConfig.from_json(config.to_json()[:-2] + ', "rnn": 1}')
