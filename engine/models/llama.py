"""Llama-family decoder (Llama, SmolLM2, Qwen2, Qwen3) over a paged KV cache.

The forward takes one packed batch: the new tokens of all scheduled
requests concatenated into [T] ids with their absolute positions, no padding.
Attention metadata says which tokens belong to which request and where each
request's keys and values live in the cache.

Q/K/V and gate/up projections are stored fused (one matmul each instead of
three and two); `load_hf_state_dict` maps the HF parameter names onto them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import ModelConfig
from engine.models.inference_kernels import Linear, install_inference_kernels
from engine.models.registry import register_architecture
from engine.models.rope import RotaryEmbedding, apply_rope, rope_inv_freq, rotate_half  # noqa: F401 (re-exported)
from kernels.attention import AttentionMetadata, paged_attention, write_kv


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 like the HF reference."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [..., dim]
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LlamaAttention(nn.Module):
    """Self-attention with fused QKV, GQA, optional biases and per-head q/k norm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_heads, config.num_kv_heads
        self.head_dim = config.head_dim
        self.q_size = config.num_heads * config.head_dim
        self.kv_size = config.num_kv_heads * config.head_dim
        self.scale = config.head_dim**-0.5
        self.qkv_proj = Linear(config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.attention_bias)
        self.o_proj = Linear(self.q_size, config.hidden_size, bias=config.attention_output_bias)
        if config.qk_norm:
            self.q_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(config.head_dim, config.rms_norm_eps)
        self.qk_norm = config.qk_norm
        self.batch_invariant = False  # set by install_inference_kernels through the model

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes this step's K/V into kv_cache."""
        tokens = x.shape[0]
        q, k, v = self.rotated_qkv(x, cos, sin)
        k_cache, v_cache = kv_cache
        write_kv(k_cache, v_cache, k, v, meta.slot_mapping)
        out = paged_attention(q, k_cache, v_cache, meta, self.scale,
                              batch_invariant=self.batch_invariant)  # [T, H, D]
        return self.o_proj(out.reshape(tokens, self.q_size))


    def rotated_qkv(self, x, cos, sin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [T, H, D], k and v [T, KVH, D] of x [T, hidden], q/k normed
        (Qwen3) and rotated; shared with the training prefill pass."""
        tokens = x.shape[0]
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        v = v.view(tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        # Rotated in float32 (cos/sin are float32), rounded once to the model dtype.
        return apply_rope(q.float(), cos, sin).to(x.dtype), apply_rope(k.float(), cos, sin).to(x.dtype), v


class LlamaMLP(nn.Module):
    """SwiGLU feed-forward with fused gate/up projection."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gate_up_proj = Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.down_proj = Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [T, hidden]
        gate, up = self.gate_up_proj(x).split(self.intermediate_size, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class LlamaDecoderLayer(nn.Module):
    """Pre-norm residual block: attention then MLP."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, h, cos, sin, kv_cache, meta) -> torch.Tensor:  # [T, hidden]
        h = h + self.self_attn(self.input_layernorm(h), cos, sin, kv_cache, meta)
        return h + self.mlp(self.post_attention_layernorm(h))


class LlamaModel(nn.Module):
    """Embedding, decoder layers and final norm (HF's `model.` prefix)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config) for _ in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class LlamaForCausalLM(nn.Module):
    """Causal LM over packed batches and a paged KV cache."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.rotary = RotaryEmbedding(config)
        self.head_kernel = None  # PackedLinear for compute_logits, once installed
        self.batch_invariant = False
        self.kernel_description = "torch"

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,  # [T] long
        positions: torch.Tensor,  # [T] long
        kv_caches: list[tuple[torch.Tensor, torch.Tensor]],
        meta: AttentionMetadata,
        aux_layers: tuple[int, ...] = (),
        num_layers: int | None = None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (final-normed hidden [T, hidden], [hidden after each aux layer]).

        `num_layers=n` runs only the first n layers, then the final norm (a
        self-draft model); `kv_caches` needs an entry for each layer run.
        """
        layers = self._layers_to_run(num_layers, len(kv_caches), aux_layers)
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.rotary(positions, torch.float32, max_position=meta.max_seq_len - 1)
        aux: dict[int, torch.Tensor] = {}
        for index, layer in enumerate(layers):
            h = layer(h, cos, sin, kv_caches[index], meta)
            if index in aux_layers:
                aux[index] = h
        return self.model.norm(h), [aux[i] for i in aux_layers]

    def _layers_to_run(self, num_layers, num_caches: int, aux_layers) -> nn.ModuleList:
        n = len(self.model.layers) if num_layers is None else num_layers
        if not 0 < n <= len(self.model.layers):
            raise ValueError(f"num_layers must be in [1, {len(self.model.layers)}], got {n}")
        if num_caches < n:
            raise ValueError(f"running {n} layers needs {n} KV caches, got {num_caches}")
        if any(not 0 <= i < n for i in aux_layers):
            raise ValueError(f"aux_layers {aux_layers} outside the {n} layers run")
        return self.model.layers[:n]

    @torch.no_grad()
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [N, hidden] -> logits [N, vocab] float32."""
        if self.head_kernel is not None:
            return self.head_kernel(hidden).float()
        return F.linear(hidden, self.lm_head_weight()).float()

    def lm_head_weight(self) -> torch.Tensor:
        """[vocab, hidden]: the LM head, or the embedding table when tied."""
        return self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight

    def use_inference_kernels(self, batch_invariant: bool = True) -> None:
        """Pack the weights for the fastest kernels of their dtype; in
        batch-invariant mode a token's logits are bitwise the same whatever
        batch computes it (kernels.invariant_attention, kernels.linear).
        Call again after changing weights or to switch the mode."""
        self.kernel_description = install_inference_kernels(self, batch_invariant)
        for layer in self.model.layers:
            layer.self_attn.batch_invariant = batch_invariant

    def use_column_major_weights(self) -> None:
        """Store each [out, in] matrix as the transpose of a contiguous [in, out]
        tensor (same shapes and names). On CPU, F.linear then multiplies without
        packing the weight: 1.3-2x faster for 4-16 rows (batched decode,
        verification), no slower for one row."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)) and module.weight.is_contiguous():
                module.weight.data = module.weight.data.t().contiguous().t()

    def load_hf_state_dict(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load HF Llama/Qwen2/Qwen3 weights (strict: missing or unexpected names raise).

        Tensors are cast to the dtype of the parameters they replace; on a
        meta-device model they are assigned as they are (no copy).
        """
        state_dict = _drop_ignorable(state_dict, self.config)
        expected = set(hf_parameter_names(self.config))
        missing, unexpected = expected - state_dict.keys(), state_dict.keys() - expected
        if missing or unexpected:
            raise KeyError(
                f"checkpoint does not match the config: missing {sorted(missing)[:8]}, "
                f"unexpected {sorted(unexpected)[:8]}"
            )
        fused = fuse_hf_state_dict(state_dict, self.config)
        self._assign(fused)

    def _assign(self, fused: dict[str, torch.Tensor]) -> None:
        own = self.state_dict(keep_vars=True)
        for name, tensor in fused.items():
            target = own[name]
            if tuple(tensor.shape) != tuple(target.shape):
                raise ValueError(f"{name}: checkpoint shape {tuple(tensor.shape)} != model {tuple(target.shape)}")
            device = tensor.device if target.is_meta else target.device
            fused[name] = tensor.to(device=device, dtype=target.dtype)
        self.load_state_dict(fused, strict=True, assign=True)


def _drop_ignorable(state_dict: dict, config: ModelConfig) -> dict:
    """Drop what some checkpoints carry but the model derives or shares."""
    kept = {k: v for k, v in state_dict.items() if not k.endswith("rotary_emb.inv_freq")}
    if config.tie_word_embeddings:
        kept.pop("lm_head.weight", None)  # a saved copy of the tied embedding
    return kept


def hf_parameter_names(config: ModelConfig) -> list[str]:
    """The parameter names an HF checkpoint of this config holds."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        names += [f"model.layers.{i}.{n}" for n in _hf_layer_names(config)]
    return names


def _hf_layer_names(config: ModelConfig) -> list[str]:
    names = ["input_layernorm.weight", "post_attention_layernorm.weight"]
    names += [f"mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")]
    names += [f"self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]
    if config.attention_bias:
        names += [f"self_attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj")]
    if config.attention_output_bias:
        names.append("self_attn.o_proj.bias")
    if config.qk_norm:
        names += ["self_attn.q_norm.weight", "self_attn.k_norm.weight"]
    return names


def fuse_hf_state_dict(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, torch.Tensor]:
    """HF names -> this module's names: q/k/v into qkv_proj, gate/up into gate_up_proj."""
    fused = dict(state_dict)
    for i in range(config.num_layers):
        prefix = f"model.layers.{i}."
        for kind in ("weight", "bias"):
            parts = [f"{prefix}self_attn.{p}.{kind}" for p in ("q_proj", "k_proj", "v_proj")]
            if parts[0] in fused:
                fused[f"{prefix}self_attn.qkv_proj.{kind}"] = torch.cat([fused.pop(p) for p in parts])
        parts = [f"{prefix}mlp.{p}.weight" for p in ("gate_proj", "up_proj")]
        fused[f"{prefix}mlp.gate_up_proj.weight"] = torch.cat([fused.pop(p) for p in parts])
    return fused


def _llama(config_json: dict) -> dict:
    bias = bool(config_json.get("attention_bias", False))
    return {"attention_bias": bias, "attention_output_bias": bias}


register_architecture("llama", LlamaForCausalLM, _llama)
