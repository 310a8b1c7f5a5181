"""Builds the drafter named by the speculative config."""
from __future__ import annotations

import torch

from engine.config import HEAD_METHODS, EngineConfig
from engine.models.loader import LoadedModel, load_model
from engine.spec.base import Drafter
from engine.spec.draft_model import ModelDrafter
from engine.spec.ngram import NgramDrafter


def build_drafter(config: EngineConfig, target: LoadedModel, num_blocks: int,
                  dtype: torch.dtype) -> Drafter | None:
    spec = config.speculative
    if not spec.enabled:  # method none, or --verify-policy off
        return None
    if spec.method == "ngram":
        return NgramDrafter(spec.ngram_min, spec.ngram_max)
    block_size, k = config.cache.block_size, spec.num_speculative_tokens
    if spec.method == "self-draft":
        layers = spec.self_draft_layers or max(1, target.config.num_layers // 3)
        if layers >= target.config.num_layers:
            raise ValueError("self-draft needs fewer layers than the target has")
        return ModelDrafter(target.model, target.config, num_blocks, block_size, k, dtype,
                            config.device, num_layers=layers)
    if spec.method == "draft-model":
        draft = load_model(spec.draft_model, dtype, config.device)
        check_same_vocabulary(target, draft)
        return ModelDrafter(draft.model, draft.config, num_blocks, block_size, k, dtype, config.device)
    if spec.method in HEAD_METHODS:
        return load_head_drafter(spec.method, spec.draft_model, target, dtype, config.device)
    raise ValueError(f"speculative method {spec.method!r} is not available")


def load_head_drafter(method: str, path: str, target: LoadedModel, dtype, device) -> Drafter:
    """A trained head; its checkpoint must be of the method asked for."""
    from engine.spec.head_drafter import HeadDrafter

    drafter = HeadDrafter.from_checkpoint(path, target.model, dtype, device)
    kind = drafter.head.config.method
    if kind != method:
        raise ValueError(f"{path} holds a {kind} head, not {method}")
    return drafter


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """A draft model must share the target's tokenizer: token ids are compared."""
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft model vocabulary ({draft.config.vocab_size}) differs from the "
                         f"target's ({target.config.vocab_size})")
    probe = "Hello, world! 123 def f(x): return x"
    if draft.tokenizer.encode(probe) != target.tokenizer.encode(probe):
        raise ValueError("draft model tokenizer differs from the target's")
