"""Teacher-forced target passes for training data: hidden states of the
heads' aux layers and the target's next-token distribution (top-k), at
prefill speed.

A teacher-forced pass needs no KV cache: every sequence is known in full,
so each layer attends causally within the sequence in one dense SDPA call
(batch and head dimensions explicit, which lets torch's CPU flash kernel
run; measured 15x faster than the serving path's per-request attention at
2048 tokens, which goes through the 3-D math fallback). The layers
themselves are the target's own modules (norms, projections, RoPE, MLP),
so the numerics are the target's up to summation order; a test checks
the pass against the serving forward.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F



@dataclass
class TargetStates:
    """Per sequence: aux [T, A*H] (the heads' input features) and the
    target's top-k next-token log-probabilities at every position
    (topk_ids [T, k] long, topk_logprobs [T, k] float32; row i is the
    distribution of token i+1)."""

    aux: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor


@contextmanager
def batch_free_kernels(model):
    """The model's batch-free kernels for the duration (and its own mode
    again afterwards). Training features are never served, so they need no
    batch invariance, and on a host whose invariant bfloat16 kernels split
    each layer into 32-row calls the free ones run this pass ~1.4x faster
    (SmolLM2, one thread: 1,128 tok/s against 750; tools.feature_pass_speed)."""
    invariant = getattr(model, "batch_invariant", False)
    if invariant:
        model.use_inference_kernels(batch_invariant=False)
    try:
        yield model
    finally:
        if invariant:
            model.use_inference_kernels(batch_invariant=True)


@torch.inference_mode()
def teacher_forced_states(model, sequences: list[list[int]], aux_layers: tuple[int, ...],
                          top_k: int) -> list[TargetStates]:
    """One causal pass per sequence of a packed batch (the linears run over
    all tokens at once). `model` is a LlamaForCausalLM."""
    device = model.model.embed_tokens.weight.device
    lengths = [len(s) for s in sequences]
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long, device=device)
    positions = torch.cat([torch.arange(n, device=device) for n in lengths])
    h = model.model.embed_tokens(ids)
    cos, sin = model.rotary(positions, h.dtype)
    aux: dict[int, torch.Tensor] = {}
    for index, layer in enumerate(model.model.layers):
        h = h + _attention(layer.self_attn, layer.input_layernorm(h), cos, sin, lengths)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        if index in aux_layers:
            aux[index] = h
    features = torch.cat([aux[i] for i in aux_layers], dim=-1)
    logprobs, top_ids = _top_k(model, model.model.norm(h), top_k)
    return [TargetStates(a, i, p) for a, i, p in zip(features.split(lengths), top_ids.split(lengths),
                                                     logprobs.split(lengths))]


def _attention(attn, x: torch.Tensor, cos, sin, lengths: list[int]) -> torch.Tensor:
    """The target layer's attention, causal within each packed sequence."""
    tokens = x.shape[0]
    q, k, v = attn.rotated_qkv(x, cos, sin)
    out = torch.cat([_causal_sdpa(q_s, k_s, v_s, attn.scale)
                     for q_s, k_s, v_s in zip(q.split(lengths), k.split(lengths), v.split(lengths))])
    return attn.o_proj(out.reshape(tokens, attn.q_size))


def _causal_sdpa(q, k, v, scale: float) -> torch.Tensor:
    """[T, heads, D] -> [T, heads, D]; 4-D inputs for the fused kernel."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                         v.transpose(0, 1)[None], is_causal=True, scale=scale,
                                         enable_gqa=q.shape[1] != k.shape[1])
    return out[0].transpose(0, 1)


def _top_k(model, final: torch.Tensor, k: int, rows_per_call: int = 512):
    """(log-probs [T, k] float32, ids [T, k] long) of the target's
    distribution at every row, a few hundred rows at a time so the [rows, V]
    logits stay small."""
    values, indices = [], []
    for chunk in final.split(rows_per_call):
        logprobs = torch.log_softmax(model.compute_logits(chunk).float(), dim=-1)
        top = logprobs.topk(k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values), torch.cat(indices)
