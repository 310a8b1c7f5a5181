"""A model architecture: a Llama whose token embeddings are multiplied by
sqrt(hidden_size) before the first layer (as Gemma does), served for
checkpoints whose config.json says `"model_type": "scaled_llama"`.

Adding it to specserve: save this file as engine/models/scaled_llama.py and
add `scaled_llama` to the import line of engine/models/__init__.py. Weights,
paged attention, RoPE, the inference kernels and every drafter come from
the Llama module it extends.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.config import ModelConfig
from engine.models.llama import LlamaForCausalLM
from engine.models.registry import register_architecture


class ScaledEmbedding(nn.Embedding):
    """An embedding table whose lookups come out multiplied by `scale`; the
    table itself (and so a tied LM head) keeps the checkpoint's values."""

    def __init__(self, num_embeddings: int, dim: int, scale: float):
        super().__init__(num_embeddings, dim)
        self.scale = scale

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return super().forward(input_ids) * self.scale


class ScaledLlamaForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM with scaled embedding lookups; same parameter names."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        self.model.embed_tokens = ScaledEmbedding(config.vocab_size, config.hidden_size,
                                                  scale=config.hidden_size ** 0.5)


def adapt_config(config_json: dict) -> dict:
    """ModelConfig fields the generic HF reader cannot know: this family's
    config.json names its norm epsilon `layer_norm_epsilon`."""
    return {"rms_norm_eps": config_json.get("layer_norm_epsilon", 1e-6)}


register_architecture("scaled_llama", ScaledLlamaForCausalLM, adapt_config)
