"""EAGLE-3: one decoder layer over [fused low/mid/high features ; token embedding].

Serving keeps the head's own KV cache per request: absorbing context runs
the layer over new entries (feats_i, token_{i+1}); drafting continues from
the last entry's output, feeding the layer's own output hidden state back
instead of fused target features. Training-time test:
engine/spec/training/ttt.py.
"""
from __future__ import annotations

import torch
from torch import nn

from engine.models.inference_kernels import Linear
from engine.models.llama import LlamaMLP, RMSNorm
from engine.spec.heads.base import DraftHead
from engine.spec.heads.config import HeadConfig
from engine.spec.heads.drafting import DraftBatch, RequestState, padded_context
from engine.spec.heads.layers import HeadAttention, attend
from kernels.to_device import to_device


class Eagle3Head(DraftHead):
    """One decoder layer over [fused low/mid/high features ; token embedding].

    Drafts autoregressively with its own KV: step s >= 2 feeds the layer's
    previous output hidden state instead of fused target features.
    """

    config_defaults = {"num_layers": 1}

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        h = config.hidden_size
        self.fc = Linear(config.feature_size, h, bias=False)  # 3H -> H
        self.hidden_norm = RMSNorm(h, config.rms_norm_eps)
        self.embed_norm = RMSNorm(h, config.rms_norm_eps)
        self.self_attn = HeadAttention(config, in_dim=2 * h)
        self.post_attention_layernorm = RMSNorm(h, config.rms_norm_eps)
        self.mlp = LlamaMLP(config.layer_config())

    def fuse(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [..., A*H] -> [..., H]."""
        return self.fc(feats.to(self.fc.weight.dtype))

    def layer_input(self, hidden_in: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """hidden_in [B, Q, H], tokens [B, Q] -> [B, Q, 2H]."""
        return torch.cat([self.embed_norm(self.embed(tokens)), self.hidden_norm(hidden_in)], dim=-1)

    def step(self, hidden_in, tokens, positions, past_k, past_v, mask):
        """Run the layer over new entries that attend to past entries and each other.

        hidden_in [B, Q, H]; tokens, positions [B, Q]; past_k/past_v
        [B, P, kvh, hd]; mask [B, Q, P + Q]. Returns (out [B, Q, H], k, v
        [B, Q, kvh, hd]) with the new entries' keys and values.
        """
        cos, sin = self.rotary(positions, hidden_in.dtype)
        q, k, v = self.self_attn.qkv(self.layer_input(hidden_in, tokens), cos, sin)
        attn = attend(q, torch.cat([past_k, k], 1), torch.cat([past_v, v], 1), mask)
        return self.finish(hidden_in, attn), k, v

    def finish(self, hidden_in: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual over the hidden half of the input, then the MLP."""
        h = hidden_in + self.self_attn.o_proj(attn)
        return h + self.mlp(self.post_attention_layernorm(h))

    # ---- serving ---------------------------------------------------------------
    def absorb_context(self, state: RequestState, request, feats: torch.Tensor) -> None:
        """Run the head over new context entries (feats_i, token_{i+1}) with
        causal attention over its cached entries; keep the last output."""
        start, n = state.num_context, feats.shape[0]
        tokens = to_device(request.token_ids(start + 1, start + n + 1), device=feats.device)
        positions = torch.arange(start, start + n, device=feats.device)
        past_k, past_v = state.kv[0].view() if state.kv else self._empty_kv(feats)
        mask = _causal_after_past(past_k.shape[0], n, feats.device)
        out, k, v = self.step(self.fuse(feats)[None], tokens[None], positions[None],
                              past_k[None], past_v[None], mask[None])
        state.append_kv([(k[0], v[0])])
        state.last = out[0, -1]

    def draft(self, batch: DraftBatch) -> None:
        """One head step per draft, each attending to the cached context
        plus this call's own (temporary) draft entries."""
        layers, valid = padded_context(batch.states, 1)
        past_k, past_v = layers[0]
        lengths = to_device([s.num_context for s in batch.states], device=past_k.device)
        out = torch.stack([s.last for s in batch.states])  # [R, H]
        prev = batch.sample(0, self.draft_logits(self.logits(out)), None)
        for k in range(1, batch.longest):
            position = (lengths - 1 + k)[:, None]
            valid = torch.cat([valid, valid.new_ones(batch.size, 1)], dim=1)
            out, new_k, new_v = self.step(out[:, None], prev[:, None], position, past_k, past_v,
                                          valid[:, None, :])
            past_k, past_v = torch.cat([past_k, new_k], 1), torch.cat([past_v, new_v], 1)
            out = out[:, 0]
            prev = batch.sample(k, self.draft_logits(self.logits(out)), None)

    def _empty_kv(self, like: torch.Tensor):
        shape = (0, self.config.num_kv_heads, self.config.head_dim)
        return like.new_empty(shape), like.new_empty(shape)


def _causal_after_past(num_past: int, n: int, device) -> torch.Tensor:
    """[n, num_past + n]: new entry j sees every past entry and new entries <= j."""
    new = torch.ones(n, n, dtype=torch.bool, device=device).tril()
    return torch.cat([torch.ones(n, num_past, dtype=torch.bool, device=device), new], dim=1)
