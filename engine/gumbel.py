"""Seeded sampling: Gumbel-max with counter-based noise.

A seeded request samples output position n as

    token_n = argmax_v (log p_n(v) + g(seed, n, v))

where p_n is the request's transformed target distribution
(sampler.target_probs) and g(seed, n, v) is standard Gumbel noise computed
from a hash of (seed, n, v). Why this rule:

- It is an exact sample of p_n (the Gumbel-max trick), and the noise at
  position n is independent of the noise at earlier positions, so the
  output sequence has exactly the target's distribution over seeds.
- The noise depends on nothing but (seed, n, v): not on the batch, the
  step, the device or how many drafts were verified. Plain decoding and
  speculative verification emit the same argmax at every position (a draft
  is accepted iff it IS that argmax; the first mismatch emits the argmax;
  after all accepted drafts the bonus is the argmax), so a seeded request
  gives the same tokens with speculation on or off, at any load.
- Drafters draft seeded requests with the same noise (argmax(log q_n + g)),
  which makes draft and target agree often: when q is close to p the two
  argmaxes coincide.
- A token of probability 0 has log p = -inf and never wins.

The hash works on 32-bit lanes held in int64 tensors with every product
below 2**49, so it is exact integer arithmetic on any device (no overflow,
no float rounding). Uniforms take 32 bits per token, so u lies on a grid of
2**-32 (never 0 or 1); within one row the V values are distinct.
"""
from __future__ import annotations

import functools

import torch

from kernels.to_device import to_device

_MASK = 0xFFFFFFFF
_TOKEN_SALT = 0x9E3779B9  # keeps token 0's key away from 0
_POSITION_SALT = 0x85EBCA6B


def seeded_tokens(probs: torch.Tensor, seeds: list[int], positions: list[int]) -> torch.Tensor:
    """probs [N, V]; row i belongs to a request with seed seeds[i] at output
    position positions[i]. Returns the Gumbel-max tokens [N] long."""
    if probs.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=probs.device)
    return race_argmax(probs, exponential_noise(seeds, positions, probs.shape[1], probs.device))


def race_argmax(probs: torch.Tensor, clocks: torch.Tensor) -> torch.Tensor:
    """argmax(p / E) per row: probs [N, V], clocks E [N, V] float64 -> [N] long.

    With g = -log E this is argmax(log p + g), the Gumbel-max rule, at the
    cost of one division instead of two more logarithms.
    """
    return (probs.double() / clocks).argmax(dim=-1)


def exponential_noise(seeds: list[int], positions: list[int], vocab: int,
                      device: str | torch.device = "cpu") -> torch.Tensor:
    """E(seed, position, token) = -log u, standard exponential: [N, vocab] float64
    (-log E is standard Gumbel)."""
    if len(seeds) != len(positions):
        raise ValueError(f"{len(seeds)} seeds for {len(positions)} positions")
    keys = _row_keys(seeds, positions, device)  # [N]
    bits = keys[:, None] ^ _token_keys(vocab, str(device))[None, :]
    _mix32_(bits)
    uniform = bits.double().add_(0.5).mul_(2.0 ** -32)
    return uniform.log_().neg_()


def _row_keys(seeds: list[int], positions: list[int], device) -> torch.Tensor:
    """One 32-bit key per (seed, position): [N] int64. A seed counts by its
    low 64 bits (any Python int, negative ones included)."""
    low = to_device([s & _MASK for s in seeds], dtype=torch.long, device=device)
    high = to_device([(s >> 32) & _MASK for s in seeds], dtype=torch.long, device=device)
    position = to_device([p & _MASK for p in positions], dtype=torch.long, device=device)
    key = _mix32_(low)
    key = _mix32_(key ^ high)
    return _mix32_(key ^ _mix32_(position ^ _POSITION_SALT))


@functools.lru_cache(maxsize=8)
def _token_keys(vocab: int, device: str) -> torch.Tensor:
    """mix32(token + salt) for every token: [vocab] int64, distinct per token."""
    return _mix32_((torch.arange(vocab, dtype=torch.long, device=device) + _TOKEN_SALT) & _MASK)


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """In place: a 32-bit avalanche mix (Wellons' lowbias32), a bijection
    on [0, 2**32). x: int64 tensor of 32-bit values."""
    x ^= x >> 16
    _mul32_(x, 0x7FEB352D)
    x ^= x >> 15
    _mul32_(x, 0x846CA68B)
    x ^= x >> 16
    return x


def _mul32_(x: torch.Tensor, constant: int) -> None:
    """In place: x = x * constant mod 2**32, in 16-bit halves of the
    constant so every product stays below 2**49."""
    high = x * (constant >> 16)
    high &= 0xFFFF
    high <<= 16
    x *= constant & 0xFFFF
    x += high
    x &= _MASK
