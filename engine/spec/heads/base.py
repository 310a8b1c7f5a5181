"""What every draft head has, and the two routines each family supplies
for serving (absorb context, draft a batch)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.llama import RMSNorm
from engine.spec.heads.config import HeadConfig, SharedWeights, target_shared_weights
from engine.spec.heads.drafting import DraftBatch, RequestState
from engine.spec.heads.layers import Rotary


class DraftHead(nn.Module):
    """Config, shared target weights, final norm, LM head; and the serving
    interface a HeadDrafter calls without asking which family it holds."""

    # HeadConfig.for_target defaults of this family (before the caller's overrides).
    config_defaults: dict = {}

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = Rotary(config)
        self.shared: SharedWeights | None = None

    @classmethod
    def check_config(cls, config: HeadConfig) -> None:
        """Raise ValueError for settings this family cannot use."""

    # ---- serving: each family implements these two ----------------------------
    def absorb_context(self, state: RequestState, request, feats: torch.Tensor) -> None:
        """Fold the target features of positions [state.num_context, +n) into
        the request's state (feats [n, A*H]); the caller advances num_context."""
        raise NotImplementedError

    def draft(self, batch: DraftBatch) -> None:
        """Draft up to `batch.longest` tokens for every request, through
        `batch.sample` (which applies each request's sampling transforms)."""
        raise NotImplementedError

    def sequential_logits(self, logits: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """Draft logits [..., V] given the previous token of each position
        [...]: the base logits, unless the family adds a term that depends on it."""
        return logits

    # ---- shared weights ------------------------------------------------------
    def attach_target(self, model) -> None:
        """Use `model`'s (a LlamaForCausalLM) embedding and LM head; check shapes."""
        shared = target_shared_weights(model)
        expected = (self.config.vocab_size, self.config.hidden_size)
        if tuple(shared.lm_head.shape) != expected or tuple(shared.embed.shape) != expected:
            raise ValueError(f"target embedding/LM head {tuple(shared.lm_head.shape)} do not match "
                             f"the head's (vocab, hidden) {expected}")
        self.shared = shared

    def _require_shared(self) -> SharedWeights:
        if self.shared is None:
            raise RuntimeError("the draft head is not attached to a target: call attach_target(model)")
        return self.shared

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] long -> [..., H] in the head's dtype."""
        return F.embedding(tokens, self._require_shared().embed).to(self.norm.weight.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] (pre-norm) -> [..., V] float32 through the frozen LM head."""
        normed = self.norm(hidden)
        return F.linear(normed, self._require_shared().lm_head.to(normed.dtype)).float()

    def num_own_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
