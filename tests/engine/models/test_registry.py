"""engine/models/registry.py: architectures by HF model_type, registered once."""
from __future__ import annotations

import pytest

from engine.models import registry
from engine.models.llama import LlamaForCausalLM
from engine.models.registry import ARCHITECTURES, architecture, register_architecture


def test_builtins_are_registered_on_first_lookup():
    assert architecture("llama").model_class is LlamaForCausalLM
    assert {"llama", "qwen2", "qwen3"} <= set(ARCHITECTURES)


def test_a_new_model_type_registers_once_and_an_unknown_one_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "ARCHITECTURES", dict(ARCHITECTURES))
    register_architecture("toy", LlamaForCausalLM, lambda config_json: {"qk_norm": True})
    assert architecture("toy").adapt_config({}) == {"qk_norm": True}
    with pytest.raises(ValueError, match="already registered"):
        register_architecture("toy", LlamaForCausalLM, dict)
    with pytest.raises(ValueError, match="not supported; supported: .*toy"):
        architecture("mamba")
