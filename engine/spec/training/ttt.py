"""EAGLE-3's training-time test: many drafting steps from every anchor of a
sequence at once, the head's own outputs fed back (what serving does)."""
from __future__ import annotations

import torch

from engine.spec.heads.eagle3 import Eagle3Head


def ttt_forward(head: Eagle3Head, feats: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor,
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
    fused = head.fuse(feats[:-1])[None]  # [1, E, H]
    cos, sin = head.rotary(entries[None], fused.dtype)
    _, k_ctx, v_ctx = head.self_attn.qkv(head.layer_input(fused, tokens[1:][None]), cos, sin)
    causal = entries[None, :] <= anchors[:, None]  # [N, E]: anchor i sees entries <= i
    hidden_in, own_k, own_v, outputs = fused[0, anchors], [], [], []
    for s in range(1, steps + 1):
        token = tokens[(anchors + s).clamp(max=length - 1)]
        out, k, v = _ttt_step(head, hidden_in, token, anchors + s - 1, k_ctx, v_ctx,
                              own_k, own_v, causal, first=s == 1)
        outputs.append(out)
        hidden_in = out
        if s > 1:
            own_k.append(k)
            own_v.append(v)
    return outputs


def ttt_hidden(head: Eagle3Head, feats: torch.Tensor, tokens: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """The training recipe's pass: blocks anchored at token indices `anchors`
    (context entries anchors - 1) -> pre-norm hidden [N, block_size, H]."""
    return torch.stack(ttt_forward(head, feats, tokens, anchors - 1, head.config.block_size), dim=1)


def _ttt_step(head: Eagle3Head, hidden_in, token, positions, k_ctx, v_ctx, own_k, own_v, causal, first: bool):
    """One TTT step for N anchors: keys are the real context (causal) plus
    this anchor's own earlier draft keys (a diagonal mask per step).

    hidden_in [N, H]; token, positions [N]; k_ctx/v_ctx [1, E, kvh, hd];
    own_k/own_v: lists of [N, kvh, hd]; causal [N, E] bool.
    Returns out [N, H], k, v [N, kvh, hd].
    """
    cos, sin = head.rotary(positions[:, None], hidden_in.dtype)
    q, k, v = head.self_attn.qkv(head.layer_input(hidden_in[:, None], token[:, None]), cos, sin)
    # At step 1 the anchor's own entry is already in the context (entry i).
    extra_k = own_k + ([] if first else [k[:, 0]])
    extra_v = own_v + ([] if first else [v[:, 0]])
    attn = _context_plus_own_attention(q[:, 0], k_ctx[0], v_ctx[0], extra_k, extra_v, causal)
    return head.finish(hidden_in[:, None], attn[:, None])[:, 0], k[:, 0], v[:, 0]


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
