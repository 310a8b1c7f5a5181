"""The backbone DFlash and DSpark share: a few layers over [anchor, mask,
mask, ...] in one pass, with the projected target context as extra
keys/values. Families differ in block layout (dflash.py, dspark.py) and in
what they add per position. Batched training passes:
engine/spec/training/blocks.py.
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


class BlockLayer(nn.Module):
    """A decoder layer whose queries also attend to target-context keys/values.

    Parameter names match the target's decoder layer, so it can start as a
    copy of one (engine/spec/training/blocks.py).
    """

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = HeadAttention(config, in_dim=config.hidden_size)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config.layer_config())

    def forward(self, h, cos, sin, ctx_k, ctx_v, mask):
        """h [B, Q, H]; cos/sin [B, Q, 1, hd]; ctx_k/ctx_v [B, C, kvh, hd];
        mask [B, Q, C + Q]. Returns [B, Q, H]."""
        q, k, v = self.self_attn.qkv(self.input_layernorm(h), cos, sin)
        attn = attend(q, torch.cat([ctx_k, k], 1), torch.cat([ctx_v, v], 1), mask)
        h = h + self.self_attn.o_proj(attn)
        return h + self.mlp(self.post_attention_layernorm(h))


class BlockHead(DraftHead):
    """DFlash-style backbone: a few layers over [anchor, mask, mask, ...] in
    one pass, with the projected target context as extra keys/values."""

    config_defaults = {"num_layers": 2}

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        h = config.hidden_size
        self.fc = Linear(config.feature_size, h, bias=False)
        self.context_norm = RMSNorm(h, config.rms_norm_eps)
        self.mask_embedding = nn.Parameter(torch.randn(h) * 0.02)
        self.layers = nn.ModuleList(BlockLayer(config) for _ in range(config.num_layers))

    @property
    def block_inputs(self) -> int:
        """Tokens per block: anchor plus masks."""
        raise NotImplementedError

    @property
    def prediction_rows(self) -> slice:
        """Block rows whose outputs predict drafts 1..block_size."""
        raise NotImplementedError

    def draft_confidence(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor | None:
        """Survival probability of each draft ([R]) from a confidence head,
        or None: the drafted token's raw probability stands in for it."""
        return None

    def context(self, feats: torch.Tensor) -> torch.Tensor:
        """feats [..., A*H] -> normed context vectors [..., H]."""
        return self.context_norm(self.fc(feats.to(self.fc.weight.dtype)))

    def context_kv(self, ctx: torch.Tensor, positions: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """ctx [B, C, H]; positions [B, C] -> per layer (k, v), each [B, C, kvh, hd]."""
        cos, sin = self.rotary(positions, ctx.dtype)
        return [layer.self_attn.kv(ctx, cos, sin) for layer in self.layers]

    def block_embeddings(self, anchors: torch.Tensor, last_context: torch.Tensor) -> torch.Tensor:
        """anchors [B, N] token ids; last_context [B, N, H] (the context vector
        just before each anchor) -> [B, N * block_inputs, H] (anchor, masks...) per block."""
        anchor = self.embed(anchors)[:, :, None]  # [B, N, 1, H]
        masks = self.mask_embedding.expand(*anchors.shape, self.block_inputs - 1, -1)
        rows = torch.cat([anchor, masks], dim=2)
        if self.config.inject_last_context:
            rows = rows + last_context[:, :, None]
        return rows.flatten(1, 2)

    def block_forward(self, block_emb, positions, ctx_kv, mask) -> torch.Tensor:
        """block_emb [B, Q, H]; positions [B, Q]; ctx_kv per layer (k, v)
        [B, C, kvh, hd]; mask [B, Q, C + Q]. Returns pre-norm hidden [B, Q, H]."""
        cos, sin = self.rotary(positions, block_emb.dtype)
        h = block_emb
        for layer, (k, v) in zip(self.layers, ctx_kv):
            h = layer(h, cos, sin, k, v, mask)
        return h

    # ---- serving ---------------------------------------------------------------
    def absorb_context(self, state: RequestState, request, feats: torch.Tensor) -> None:
        """feats [n, A*H]: projected context keys/values, one pass per layer."""
        positions = torch.arange(state.num_context, state.num_context + feats.shape[0],
                                 device=feats.device)[None]
        ctx = self.context(feats)
        state.append_kv([(k[0], v[0]) for k, v in self.context_kv(ctx[None], positions)])
        state.last = ctx[-1]

    def draft(self, batch: DraftBatch) -> None:
        """The whole block in one backbone pass; per-position terms after it."""
        ctx_kv, ctx_valid = padded_context(batch.states, len(self.layers))
        lengths = to_device([s.num_context for s in batch.states], device=ctx_valid.device)
        anchors = to_device([[i.request.last_token_id] for i in batch.items], device=ctx_valid.device)
        width = self.block_inputs
        positions = lengths[:, None] + torch.arange(width, device=lengths.device)
        mask = torch.cat([ctx_valid[:, None, :].expand(-1, width, -1),
                          ctx_valid.new_ones(batch.size, width, width)], dim=2)
        last_context = torch.stack([s.last for s in batch.states])[:, None]  # [R, 1, H]
        hidden = self.block_forward(self.block_embeddings(anchors, last_context), positions, ctx_kv, mask)
        hidden = hidden[:, self.prediction_rows][:, : batch.longest]  # [R, k, H]
        base = self.logits(hidden)  # [R, k, output_size]
        prev = anchors[:, 0]
        for k in range(hidden.shape[1]):
            logits = self.draft_logits(self.sequential_logits(base[:, k], prev))
            prev = batch.sample(k, logits, self.draft_confidence(hidden[:, k], prev))
