"""Draft heads that read the target's hidden states: EAGLE-3, DFlash, DSpark.

All three share the target's frozen token embedding and LM head. Those are
never stored in a head checkpoint: `attach_target` points a head at the
target's tensors at load time, so a checkpoint holds only the head's own
weights (a few MB) and refuses a target of a different shape.

Conventions (the same in training and serving; design/speculation.md s.2):
- `feats_i` is the concatenation of the target's `aux_layers` outputs at
  sequence position i, [A * H].
- EAGLE-3: context entry i is (feats_i, token_{i+1}) at position i; its
  output predicts token_{i+2}. Drafting continues from the last entry with
  the head's own output hidden state in place of the fused features.
- DFlash: the block is the anchor (the last emitted token, at position a,
  which has no features yet) followed by `block_size` mask tokens; the
  outputs at the mask positions predict the drafts.
- DSpark: the anchor itself is the first prediction position, so the block
  is the anchor and `block_size - 1` masks; a Markov head adds a bigram
  term per position and a confidence head predicts survival.
- DFlash/DSpark blocks attend bidirectionally among themselves and to the
  projected target context of positions < a (extra keys/values per layer).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from engine.config import ModelConfig
from engine.models.llama import LlamaMLP, RMSNorm, RotaryEmbedding, apply_rope

METHODS = ("eagle3", "dflash", "dspark")
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# Block heads start with their final norm at this fraction of the target's.
INITIAL_OUTPUT_SCALE = 0.25


# ---------------------------------------------------------------- config

@dataclass
class HeadConfig:
    """Architecture and serving metadata of one draft head (its config.json)."""

    method: str
    vocab_size: int
    hidden_size: int
    target_num_layers: int
    aux_layers: tuple[int, ...]
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    num_layers: int = 1
    block_size: int = 7  # drafts per block (gamma); DFlash/DSpark are trained for exactly this
    markov_rank: int = 0  # DSpark only
    # Block heads: add the last context vector (position a-1) to every block
    # input, EAGLE-style, so the most recent target state need not be found
    # by attention first (much faster to train on a CPU budget).
    inject_last_context: bool = True
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    # Sequential Temperature Scaling, one temperature per draft position
    # (engine/spec/training/calibrate.py); None = raw confidences.
    calibration: list[float] | None = None
    target: str = ""  # informational: what it was trained against
    training: dict = field(default_factory=dict)  # informational: how
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.aux_layers = tuple(int(i) for i in self.aux_layers)
        if self.method not in METHODS:
            raise ValueError(f"unknown draft head method {self.method!r}; choose from {METHODS}")
        if not self.aux_layers or any(not 0 <= i < self.target_num_layers for i in self.aux_layers):
            raise ValueError(f"aux_layers {self.aux_layers} must be non-empty layers of the target")
        if not 1 <= self.block_size <= 16 or self.num_layers < 1:
            raise ValueError("need 1 <= block_size <= 16 and num_layers >= 1")
        if self.method == "dspark" and self.markov_rank < 1:
            raise ValueError("dspark needs markov_rank >= 1")
        if self.calibration is not None and len(self.calibration) != self.block_size:
            raise ValueError("calibration needs one temperature per draft position")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"head checkpoint format {self.format_version} is not {FORMAT_VERSION}")

    @property
    def feature_size(self) -> int:
        return len(self.aux_layers) * self.hidden_size

    @classmethod
    def for_target(cls, method: str, target_config: ModelConfig, **overrides) -> "HeadConfig":
        """Defaults sized for `target`: attention geometry copied from it,
        EAGLE-3's low/middle/high layers, one layer for EAGLE-3 and two for
        the block drafters, and a Markov rank that keeps DSpark near 25 MB."""
        target = target_config
        n = target.num_layers
        low, mid, high = min(2, n - 1), n // 2, max(0, n - 3)
        values = dict(
            method=method, vocab_size=target.vocab_size, hidden_size=target.hidden_size,
            target_num_layers=n, aux_layers=tuple(sorted({low, mid, high})),
            num_heads=target.num_heads, num_kv_heads=target.num_kv_heads, head_dim=target.head_dim,
            intermediate_size=target.intermediate_size, num_layers=1 if method == "eagle3" else 2,
            markov_rank=32 if method == "dspark" else 0, rms_norm_eps=target.rms_norm_eps,
            rope_theta=target.rope_theta, rope_scaling=target.rope_scaling,
            max_position_embeddings=target.max_position_embeddings,
        )
        values.update(overrides)
        return cls(**values)

    def to_json(self) -> str:
        data = asdict(self)
        data["aux_layers"] = list(self.aux_layers)
        return json.dumps(data, indent=2)

    @classmethod
    def from_json(cls, text: str) -> "HeadConfig":
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown head config keys {sorted(unknown)}")
        return cls(**data)

    def layer_config(self) -> ModelConfig:
        """A ModelConfig with the head's attention geometry (for RoPE and MLPs)."""
        return ModelConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps, rope_theta=self.rope_theta,
            rope_scaling=self.rope_scaling, max_position_embeddings=self.max_position_embeddings,
        )


# ---------------------------------------------------------------- building blocks

@dataclass
class SharedWeights:
    """The target's frozen tensors a head uses (never saved with the head)."""

    embed: torch.Tensor  # [V, H]
    lm_head: torch.Tensor  # [V, H]


def target_shared_weights(model) -> SharedWeights:
    """Embedding and LM head of a LlamaForCausalLM (tied or not), detached."""
    embed = model.model.embed_tokens.weight.detach()
    lm_head = embed if model.config.tie_word_embeddings else model.lm_head.weight.detach()
    return SharedWeights(embed, lm_head)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention with an explicit boolean mask.

    q: [B, Q, nh, hd]; k, v: [B, K, kvh, hd]; mask: [B, Q, K] (True = may
    attend; every query row must allow at least one key).
    Returns [B, Q, nh * hd].
    """
    out = F.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
        attn_mask=mask[:, None], enable_gqa=q.shape[2] != k.shape[2])
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[1], -1)


class HeadAttention(nn.Module):
    """Q/K/V/O projections with RoPE, named like the target's attention so
    block drafters can start from copies of target layers."""

    def __init__(self, config: HeadConfig, in_dim: int):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_heads, config.num_kv_heads, config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.qkv_proj = nn.Linear(in_dim, self.q_size + 2 * self.kv_size, bias=False)
        self.o_proj = nn.Linear(self.q_size, config.hidden_size, bias=False)

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x [B, Q, in_dim]; cos/sin [B, Q, 1, hd] -> q [B,Q,nh,hd], k, v [B,Q,kvh,hd]."""
        b, t = x.shape[:2]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = apply_rope(q.view(b, t, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        return q, k, v.view(b, t, self.num_kv_heads, self.head_dim)

    def kv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Keys and values only (context entries that never query)."""
        b, t = x.shape[:2]
        weight = self.qkv_proj.weight[self.q_size:]
        k, v = F.linear(x, weight).split([self.kv_size, self.kv_size], dim=-1)
        k = apply_rope(k.view(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        return k, v.view(b, t, self.num_kv_heads, self.head_dim)


class _Rotary:
    """RoPE for [B, Q] position grids (the target's RotaryEmbedding takes [T])."""

    def __init__(self, config: HeadConfig):
        self.rotary = RotaryEmbedding(config.layer_config())

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype):
        """positions [B, Q] -> cos, sin [B, Q, 1, hd]."""
        cos, sin = self.rotary(positions.reshape(-1), dtype)
        shape = (*positions.shape, 1, cos.shape[-1])
        return cos.view(shape), sin.view(shape)


class DraftHead(nn.Module):
    """What every head has: config, shared target weights, final norm, LM head."""

    def __init__(self, config: HeadConfig):
        super().__init__()
        self.config = config
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary = _Rotary(config)
        self.shared: SharedWeights | None = None

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


# ---------------------------------------------------------------- EAGLE-3

class Eagle3Head(DraftHead):
    """One decoder layer over [fused low/mid/high features ; token embedding].

    Drafts autoregressively with its own KV: step s >= 2 feeds the layer's
    previous output hidden state instead of fused target features.
    """

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        h = config.hidden_size
        self.fc = nn.Linear(config.feature_size, h, bias=False)  # 3H -> H
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
        return self._finish(hidden_in, attn), k, v

    def _finish(self, hidden_in: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual over the hidden half of the input, then the MLP."""
        h = hidden_in + self.self_attn.o_proj(attn)
        return h + self.mlp(self.post_attention_layernorm(h))

    def ttt_forward(self, feats: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor,
                    steps: int) -> list[torch.Tensor]:
        """Training-time test over one sequence: `steps` drafting steps from
        every anchor at once, feeding the head's own outputs back.

        feats [T, A*H]; tokens [T] long; anchors [N] long context-entry
        indices (entry i = (feats_i, token_{i+1}); need i <= T-2).
        Returns, per step s, out [N, H]: the hidden state predicting
        token_{i+s+1}. Token inputs past the end are clamped (their
        predictions must be masked out of the loss by the caller).
        """
        length = tokens.shape[0]
        entries = torch.arange(length - 1, device=tokens.device)
        fused = self.fuse(feats[:-1])[None]  # [1, E, H]
        cos, sin = self.rotary(entries[None], fused.dtype)
        _, k_ctx, v_ctx = self.self_attn.qkv(self.layer_input(fused, tokens[1:][None]), cos, sin)
        causal = entries[None, :] <= anchors[:, None]  # [N, E]: anchor i sees entries <= i
        hidden_in, own_k, own_v, outputs = fused[0, anchors], [], [], []
        for s in range(1, steps + 1):
            token = tokens[(anchors + s).clamp(max=length - 1)]
            out, k, v = self._ttt_step(hidden_in, token, anchors + s - 1, k_ctx, v_ctx,
                                       own_k, own_v, causal, first=s == 1)
            outputs.append(out)
            hidden_in = out
            if s > 1:
                own_k.append(k)
                own_v.append(v)
        return outputs

    def _ttt_step(self, hidden_in, token, positions, k_ctx, v_ctx, own_k, own_v, causal, first: bool):
        """One TTT step for N anchors: keys are the real context (causal) plus
        this anchor's own earlier draft keys (a diagonal mask per step).

        hidden_in [N, H]; token, positions [N]; k_ctx/v_ctx [1, E, kvh, hd];
        own_k/own_v: lists of [N, kvh, hd]; causal [N, E] bool.
        Returns out [N, H], k, v [N, kvh, hd].
        """
        cos, sin = self.rotary(positions[:, None], hidden_in.dtype)
        q, k, v = self.self_attn.qkv(self.layer_input(hidden_in[:, None], token[:, None]), cos, sin)
        # At step 1 the anchor's own entry is already in the context (entry i).
        extra_k = own_k + ([] if first else [k[:, 0]])
        extra_v = own_v + ([] if first else [v[:, 0]])
        attn = _context_plus_own_attention(q[:, 0], k_ctx[0], v_ctx[0], extra_k, extra_v, causal)
        return self._finish(hidden_in[:, None], attn[:, None])[:, 0], k[:, 0], v[:, 0]


def _context_plus_own_attention(q, k_ctx, v_ctx, own_k, own_v, causal) -> torch.Tensor:
    """Attention of N queries over shared context keys plus a few keys of their own.

    Computed without materialising N copies of the context: q [N, nh, hd];
    k_ctx/v_ctx [E, kvh, hd]; own_k/own_v lists of [N, kvh, hd]; causal
    [N, E] bool. Returns [N, nh * hd].
    """
    n, num_heads, head_dim = q.shape
    group = num_heads // k_ctx.shape[1]
    k_ctx, v_ctx = k_ctx.repeat_interleave(group, 1), v_ctx.repeat_interleave(group, 1)  # [E, nh, hd]
    scores = torch.einsum("nhd,ehd->nhe", q, k_ctx) * head_dim**-0.5
    scores = scores.masked_fill(~causal[:, None], float("-inf"))
    if own_k:
        keys = torch.stack(own_k, 1).repeat_interleave(group, 2)  # [N, j, nh, hd]
        values = torch.stack(own_v, 1).repeat_interleave(group, 2)
        scores = torch.cat([scores, torch.einsum("nhd,njhd->nhj", q, keys) * head_dim**-0.5], -1)
    weights = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    num_ctx = k_ctx.shape[0]
    out = torch.einsum("nhe,ehd->nhd", weights[..., :num_ctx], v_ctx)
    if own_k:
        out = out + torch.einsum("nhj,njhd->nhd", weights[..., num_ctx:], values)
    return out.reshape(n, num_heads * head_dim)


# ---------------------------------------------------------------- block drafters

class BlockLayer(nn.Module):
    """A decoder layer whose queries also attend to target-context keys/values.

    Parameter names match the target's decoder layer, so it can start as a
    copy of one (`init_from_target`).
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

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        h = config.hidden_size
        self.fc = nn.Linear(config.feature_size, h, bias=False)
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

    def blocks_for_anchors(self, feats: torch.Tensor, tokens: torch.Tensor,
                           anchors: torch.Tensor) -> torch.Tensor:
        """Training: many blocks of one sequence in one pass, each seeing
        only the context before its own anchor (exactly what serving sees).

        feats [T, A*H]; tokens [T] long; anchors [N] long token indices
        (>= 1: context is positions < anchor). Returns pre-norm hidden
        [N, block_inputs, H].
        """
        num_ctx = int(anchors.max())
        ctx_positions = torch.arange(num_ctx, device=tokens.device)
        ctx = self.context(feats[:num_ctx])
        ctx_kv = self.context_kv(ctx[None], ctx_positions[None])
        width, n = self.block_inputs, anchors.shape[0]
        offsets = torch.arange(width, device=tokens.device)
        positions = (anchors[:, None] + offsets).reshape(1, -1)
        block_of_row = torch.arange(n, device=tokens.device).repeat_interleave(width)
        sees_context = ctx_positions[None, :] < anchors[block_of_row][:, None]  # [N*W, C]
        same_block = block_of_row[:, None] == block_of_row[None, :]  # [N*W, N*W]
        mask = torch.cat([sees_context, same_block], dim=1)[None]
        inputs = self.block_embeddings(tokens[anchors][None], ctx[anchors - 1][None])
        hidden = self.block_forward(inputs, positions, ctx_kv, mask)
        return hidden.view(n, width, -1)

    def init_from_target(self, model) -> None:
        """Start the layers as copies of the target's last layers (a better
        start than random on a CPU budget) and the final norm as a scaled-down
        copy of the target's: the first logits are then near uniform instead
        of confidently wrong, which measurably speeds up early training."""
        target_layers = model.model.layers[-len(self.layers):]
        for own, src in zip(self.layers, target_layers):
            state = {k: v for k, v in src.state_dict().items() if k in own.state_dict()}
            own.load_state_dict(state, strict=False)
        with torch.no_grad():
            self.norm.weight.copy_(model.model.norm.weight * INITIAL_OUTPUT_SCALE)


class DFlashHead(BlockHead):
    """DFlash: anchor + `block_size` masks; the mask rows predict the block."""

    @property
    def block_inputs(self) -> int:
        return self.config.block_size + 1

    @property
    def prediction_rows(self) -> slice:
        return slice(1, self.config.block_size + 1)


class DSparkHead(BlockHead):
    """DSpark: the anchor row predicts draft 1; a Markov head and a
    confidence head act sequentially on top of the parallel backbone.

    p_k(v) = softmax(U_k(v) + W1[x_{k-1}] @ W2[:, v]),
    c_k = sigmoid(w . [norm(h_k) ; W1[x_{k-1}]] + b).
    """

    def __init__(self, config: HeadConfig):
        super().__init__(config)
        r = config.markov_rank
        self.markov_in = nn.Embedding(config.vocab_size, r)  # W1: V x r
        self.markov_out = nn.Parameter(torch.zeros(r, config.vocab_size))  # W2: r x V, starts as no bias
        nn.init.normal_(self.markov_in.weight, std=0.02)
        self.confidence = nn.Linear(config.hidden_size + r, 1)
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)

    @property
    def block_inputs(self) -> int:
        return self.config.block_size

    @property
    def prediction_rows(self) -> slice:
        return slice(0, self.config.block_size)

    def markov_bias(self, prev_tokens: torch.Tensor) -> torch.Tensor:
        """prev_tokens [...] -> bigram logits [..., V] float32."""
        return (self.markov_in(prev_tokens) @ self.markov_out).float()

    def confidence_logit(self, hidden: torch.Tensor, prev_tokens: torch.Tensor) -> torch.Tensor:
        """hidden [..., H] pre-norm; prev_tokens [...] -> [...] (sigmoid gives c_k)."""
        features = torch.cat([self.norm(hidden), self.markov_in(prev_tokens)], dim=-1)
        return self.confidence(features).squeeze(-1).float()


HEAD_CLASSES = {"eagle3": Eagle3Head, "dflash": DFlashHead, "dspark": DSparkHead}


# ---------------------------------------------------------------- checkpoints

def build_head(config: HeadConfig, target_model=None) -> DraftHead:
    """A freshly initialised head, attached to `target_model` when given."""
    head = HEAD_CLASSES[config.method](config)
    _init_linear_weights(head)
    if target_model is not None:
        head.attach_target(target_model)
        if isinstance(head, BlockHead):
            head.init_from_target(target_model)
    return head


def _init_linear_weights(head: nn.Module) -> None:
    """Small normal init for projections (the head learns on top of a frozen LM head)."""
    for name, module in head.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("confidence"):
            nn.init.normal_(module.weight, std=0.02)


def save_head(head: DraftHead, directory: str, dtype: torch.dtype = torch.float16) -> int:
    """Write config.json and model.safetensors (own weights only, `dtype`);
    returns the weight file's size in bytes."""
    os.makedirs(directory, exist_ok=True)
    tensors = {k: v.detach().to(dtype).contiguous().cpu() for k, v in head.state_dict().items()}
    weights = os.path.join(directory, WEIGHTS_FILE)
    _atomic_write(weights, lambda tmp: save_file(tensors, tmp, metadata={"method": head.config.method}))
    _atomic_write(os.path.join(directory, CONFIG_FILE),
                  lambda tmp: open(tmp, "w", encoding="utf-8").write(head.config.to_json()))
    return os.path.getsize(weights)


def _atomic_write(path: str, write) -> None:
    """Write to a temporary name and rename: an interrupted save never leaves half a file."""
    tmp = path + ".tmp"
    write(tmp)
    os.replace(tmp, path)


def read_head_config(directory: str) -> HeadConfig:
    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{directory} is not a draft head checkpoint (no {CONFIG_FILE})")
    with open(path, encoding="utf-8") as f:
        return HeadConfig.from_json(f.read())


def load_head(directory: str, target_model, dtype: torch.dtype = torch.float32,
              device: str | torch.device = "cpu") -> DraftHead:
    """Load a head checkpoint and attach it to `target_model` (strict weights)."""
    config = read_head_config(directory)
    _check_target_matches(config, target_model.config)
    head = HEAD_CLASSES[config.method](config)
    state = load_file(os.path.join(directory, WEIGHTS_FILE))
    head.load_state_dict(state, strict=True)
    head.to(dtype=dtype, device=device).eval()
    head.attach_target(target_model)
    return head


def _check_target_matches(config: HeadConfig, target: ModelConfig) -> None:
    mismatches = [(name, mine, theirs) for name, mine, theirs in (
        ("vocab_size", config.vocab_size, target.vocab_size),
        ("hidden_size", config.hidden_size, target.hidden_size),
        ("num_layers", config.target_num_layers, target.num_layers),
    ) if mine != theirs]
    if mismatches:
        raise ValueError(f"draft head was trained for another target: {mismatches} (head, target)")
