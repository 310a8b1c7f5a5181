"""engine/models/qwen.py: Qwen2 and Qwen3 are the Llama module with their
config quirks; both load and run from HF-layout directories."""
from __future__ import annotations

import pytest
import torch

from engine.models.llama import LlamaForCausalLM
from engine.models.loader import load_model, model_config_from_hf
from tests.tiny_model import make_tiny_model_dir

BASE = dict(vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)


def test_qwen2_has_qkv_biases_whatever_its_config_says():
    config = model_config_from_hf({**BASE, "model_type": "qwen2", "attention_bias": False})
    assert config.attention_bias and not config.attention_output_bias and not config.qk_norm


def test_qwen3_normalises_q_and_k_and_takes_its_bias_flag():
    assert model_config_from_hf({**BASE, "model_type": "qwen3"}).qk_norm
    biased = model_config_from_hf({**BASE, "model_type": "qwen3", "attention_bias": True})
    assert biased.attention_bias and biased.attention_output_bias


@pytest.mark.parametrize("architecture", ["qwen2", "qwen3"])
def test_tiny_qwen_checkpoints_load_into_the_llama_module(tmp_path, architecture):
    loaded = load_model(make_tiny_model_dir(tmp_path, architecture=architecture))
    assert type(loaded.model) is LlamaForCausalLM and loaded.config.architecture == architecture
    params = dict(loaded.model.named_parameters())
    assert ("model.layers.0.self_attn.q_norm.weight" in params) == (architecture == "qwen3")
    assert ("model.layers.0.self_attn.qkv_proj.bias" in params) == (architecture == "qwen2")
    assert torch.isfinite(loaded.model.model.embed_tokens.weight).all()
