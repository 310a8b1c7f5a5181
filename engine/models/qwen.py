"""Qwen2 and Qwen3: the Llama module with their config quirks."""
from __future__ import annotations

from engine.models.llama import LlamaForCausalLM
from engine.models.registry import register_architecture


def _qwen2(config_json: dict) -> dict:
    # Qwen2 always has q/k/v biases (its config does not say so), none on o_proj.
    return {"attention_bias": True, "attention_output_bias": False}


def _qwen3(config_json: dict) -> dict:
    bias = bool(config_json.get("attention_bias", False))
    return {"attention_bias": bias, "attention_output_bias": bias, "qk_norm": True}


register_architecture("qwen2", LlamaForCausalLM, _qwen2)
register_architecture("qwen3", LlamaForCausalLM, _qwen3)
