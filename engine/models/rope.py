"""Rotary position embeddings (RoPE) with HF's rope_scaling variants."""
from __future__ import annotations

import math

import torch

from engine.config import ModelConfig

# RoPE cos/sin are computed for this many positions at a time and kept: a
# position's values then never depend on which other positions a batch
# holds (vector and scalar cos/sin differ in the last bit), and a forward
# only gathers them.
ROPE_TABLE_BLOCK = 256


class RotaryEmbedding:
    """RoPE cos/sin for arbitrary positions, with HF's rope_scaling variants.

    Not an nn.Module: the frequencies are derived from the config, never
    loaded, so they stay out of the state dict and off the meta device.
    """

    def __init__(self, config: ModelConfig):
        self.head_dim = config.head_dim
        self.base = config.rope_theta
        self.scaling = dict(config.rope_scaling or {})
        self.rope_type = self.scaling.get("rope_type", self.scaling.get("type", "default"))
        self.max_position_embeddings = config.max_position_embeddings
        self.inv_freq, self.attention_factor = rope_inv_freq(config)
        self._on_device: dict[str, torch.Tensor] = {}
        self._tables: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # device -> (cos, sin) [N, D]

    def __call__(self, positions: torch.Tensor, dtype: torch.dtype, max_position: int | None = None):
        """positions [T] -> (cos, sin), each [T, 1, head_dim] in `dtype`.

        `max_position` (the largest position, when the caller knows it on
        the host) spares a device sync.
        """
        if max_position is None:
            max_position = int(positions.max()) if positions.numel() else 0
        cos, sin = self._table(positions.device, max_position + 1)
        cos, sin = cos.index_select(0, positions).unsqueeze(1), sin.index_select(0, positions).unsqueeze(1)
        return cos.to(dtype), sin.to(dtype)

    def _table(self, device, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 cos/sin for positions [0, >= length), grown a block at a
        time; rows once computed are never recomputed."""
        key = str(device)
        cos, sin = self._tables.get(key, (None, None))
        have = 0 if cos is None else cos.shape[0]
        if have >= length:
            return cos, sin
        blocks = [self._compute(torch.arange(start, start + ROPE_TABLE_BLOCK, device=device))
                  for start in range(have, length, ROPE_TABLE_BLOCK)]
        new_cos = torch.cat(([cos] if cos is not None else []) + [c for c, _ in blocks])
        new_sin = torch.cat(([sin] if sin is not None else []) + [s for _, s in blocks])
        self._tables[key] = (new_cos, new_sin)
        return new_cos, new_sin

    def _compute(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions [N] -> float32 (cos, sin), each [N, head_dim]."""
        if self.rope_type == "dynamic":
            inv_freq = self._dynamic_inv_freq(positions)  # [N, D/2], per token
        else:
            inv_freq = self._inv_freq_on(positions.device)  # [D/2]
        freqs = positions.float().unsqueeze(-1) * inv_freq  # [N, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos() * self.attention_factor, emb.sin() * self.attention_factor

    def _inv_freq_on(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = self.inv_freq.to(device)
        return self._on_device[key]

    def _dynamic_inv_freq(self, positions: torch.Tensor) -> torch.Tensor:
        """Dynamic NTK, per token: each key is rotated with the base of its own
        position, so cached keys never need re-rotation. Within
        max_position_embeddings this equals plain RoPE (as HF does)."""
        dim, factor = self.head_dim, float(self.scaling["factor"])
        seq_len = (positions.double() + 1).clamp(min=self.max_position_embeddings)
        base = self.base * ((factor * seq_len / self.max_position_embeddings) - (factor - 1)) ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim
        return (1.0 / base.unsqueeze(-1) ** exponents).float()


def rope_inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [head_dim/2] and the cos/sin scale, per rope_type."""
    scaling = dict(config.rope_scaling or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    dim, base = config.head_dim, config.rope_theta
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim))
    if rope_type in ("default", "dynamic"):
        return inv_freq, 1.0
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"]), 1.0
    if rope_type == "llama3":
        return _llama3_inv_freq(inv_freq, scaling), 1.0
    if rope_type == "yarn":
        return _yarn_inv_freq(config, scaling)
    raise NotImplementedError(f"rope_type {rope_type!r} is not supported")


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict) -> torch.Tensor:
    """Llama 3.1: stretch low frequencies by `factor`, keep high ones, blend between."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return torch.where(is_medium, blended, scaled)


def _yarn_inv_freq(config: ModelConfig, scaling: dict) -> tuple[torch.Tensor, float]:
    """YaRN: interpolate low frequencies, extrapolate high ones, ramp between."""
    dim, base = config.head_dim, config.rope_theta
    original = scaling.get("original_max_position_embeddings") or config.max_position_embeddings
    factor = scaling.get("factor") or config.max_position_embeddings / original
    attention_factor = scaling.get("attention_factor")
    if attention_factor is None:
        attention_factor = _yarn_mscale(factor, scaling.get("mscale"), scaling.get("mscale_all_dim"))
    low, high = _yarn_correction_range(scaling, dim, base, original)
    pos_freqs = base ** (torch.arange(0, dim, 2, device="cpu").float() / dim)
    width = high - low if high != low else 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32, device="cpu") - low) / width).clamp(0, 1)
    extrapolation_weight = 1 - ramp
    inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (1.0 / pos_freqs) * extrapolation_weight
    return inv_freq, float(attention_factor)


def _yarn_mscale(factor: float, mscale, mscale_all_dim) -> float:
    def get(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return get(factor, mscale) / get(factor, mscale_all_dim)
    return get(factor)


def _yarn_correction_range(scaling: dict, dim: int, base: float, original: int) -> tuple[float, float]:
    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low = correction_dim(scaling.get("beta_fast") or 32)
    high = correction_dim(scaling.get("beta_slow") or 1)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [T, heads, D], cos/sin [T, 1, D] (HF's non-interleaved layout)."""
    return x * cos + rotate_half(x) * sin
