"""What every draft head has, and the two routines each family supplies
for serving (absorb context, draft a batch).

Draft vocabulary (HeadConfig.draft_vocab_size > 0, as in EAGLE-3): the
head's LM head is the target's restricted to `draft_ids`, the most
frequent target tokens of its training data, which makes each draft
step's LM head and softmax a fraction of the target's. The head's own
logits (`logits`) live in that compact space; `expand_logits` scatters
them back to the target's ids with -inf elsewhere, so the distribution a
draft is sampled from (and verified against) is a full-vocabulary one
that is exactly zero off the draft vocabulary: rejection sampling stays
exact. `to_draft_ids` maps target ids into the compact space (tokens
outside it map to `output_size`, one past the end).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.inference_kernels import choose_kernel, pack_linears
from engine.models.llama import RMSNorm
from engine.spec.heads.config import HeadConfig, SharedWeights, target_shared_weights
from engine.spec.heads.drafting import CompactLogits, DraftBatch, RequestState
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
        if config.draft_vocab_size:
            self.register_buffer("draft_ids", torch.arange(config.draft_vocab_size))
            self.register_load_state_dict_post_hook(lambda module, _: module._refresh_vocab())
        self._lm_head: dict[torch.dtype, torch.Tensor] = {}  # the (restricted) LM head per dtype
        self._head_kernel = None  # its packed PackedLinear, once serving installs kernels
        self._vocab_index: torch.Tensor | None = None  # target id -> draft index

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
        """Draft logits [..., output_size] given the previous token (a target
        id) of each position [...]: the base logits, unless the family adds a
        term that depends on it."""
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
        self._refresh_vocab()

    def set_draft_vocab(self, ids: torch.Tensor) -> None:
        """Restrict the head's output to target ids `ids` ([draft_vocab_size], distinct)."""
        if not self.config.draft_vocab_size or ids.shape != self.draft_ids.shape:
            raise ValueError(f"this head has a draft vocabulary of {self.config.draft_vocab_size}, "
                             f"got {tuple(ids.shape)} ids")
        if ids.unique().numel() != ids.numel() or int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError("draft vocabulary ids must be distinct target ids")
        self.draft_ids.copy_(ids)
        self._refresh_vocab()

    def _refresh_vocab(self) -> None:
        self._lm_head.clear()
        self._head_kernel = None
        self._vocab_index = None
        if self.shared is None or not self.config.draft_vocab_size:
            return
        ids = self.draft_ids.to(self.shared.lm_head.device)
        index = torch.full((self.config.vocab_size,), len(ids), dtype=torch.long, device=ids.device)
        index[ids] = torch.arange(len(ids), device=ids.device)
        self._vocab_index = index

    @property
    def output_size(self) -> int:
        return self.config.output_size

    def to_draft_ids(self, tokens: torch.Tensor) -> torch.Tensor:
        """Target ids [...] -> draft-vocabulary indices [...] (output_size
        for a token outside it); the identity without a draft vocabulary."""
        if not self.config.draft_vocab_size:
            return tokens
        self._require_shared()
        return self._vocab_index[tokens]

    def draft_logits(self, logits: torch.Tensor) -> torch.Tensor | CompactLogits:
        """Logits [R, output_size] as DraftBatch.sample takes them: compact
        over a draft vocabulary (it expands them only where a row needs the
        full vocabulary), else as they are."""
        if not self.config.draft_vocab_size:
            return logits
        return CompactLogits(logits, self.draft_ids, self.config.vocab_size)

    def expand_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Draft-vocabulary logits [..., output_size] -> target-vocabulary
        logits [..., V], -inf off the draft vocabulary."""
        if not self.config.draft_vocab_size:
            return logits
        return CompactLogits(logits, self.draft_ids, self.config.vocab_size).expand()

    def lm_head_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """The frozen (restricted) LM head [output_size, H] in `dtype`, cached."""
        if dtype not in self._lm_head:
            weight = self._require_shared().lm_head
            if self.config.draft_vocab_size:
                weight = weight[self.draft_ids.to(weight.device)]
            self._lm_head[dtype] = weight.to(dtype)
        return self._lm_head[dtype]

    def use_inference_kernels(self) -> None:
        """Serving: pack the head's linears and its (restricted) LM head once
        for the fastest kernels of their dtype (engine.models.inference_kernels,
        free mode). On this CPU in float32 a DSpark block (fold + 7 drafts)
        takes 16.6 ms instead of 21.7 (tools.head_cost; the LM head's
        product 2.4x faster prepacked, small column-major layers 2-4x). Free, not
        batch-invariant, even when the target is: drafts reach the output
        only through verification (greedy outputs are the target's; sampled
        ones keep its distribution), and the invariant tiles cost the small
        layers more than they do the target's. The weights must not change
        afterwards; training never calls this, and gradients or autocast
        take the plain path."""
        pack_linears(self, batch_invariant=False)
        self._head_kernel = choose_kernel(self.lm_head_weight(self.norm.weight.dtype), None, "head",
                                          batch_invariant=False)

    def _require_shared(self) -> SharedWeights:
        if self.shared is None:
            raise RuntimeError("the draft head is not attached to a target: call attach_target(model)")
        return self.shared

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [...] long -> [..., H] in the head's dtype."""
        return F.embedding(tokens, self._require_shared().embed).to(self.norm.weight.dtype)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] (pre-norm) -> [..., output_size] float32 through
        the frozen (restricted) LM head. Under autocast the matrix product
        runs in the autocast dtype, with a cached copy of the LM head."""
        normed = self.norm(hidden)
        autocast = _autocast_dtype(normed)
        if self._head_kernel is not None and autocast is None and not torch.is_grad_enabled():
            return self._head_kernel(normed).float()
        dtype = autocast or normed.dtype
        return F.linear(normed.to(dtype), self.lm_head_weight(dtype)).float()

    def num_own_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None
