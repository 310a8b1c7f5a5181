"""A head's architecture and serving metadata (its config.json), and the
target tensors it borrows."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch

from engine.config import ModelConfig
from engine.spec.heads.registry import head_class

FORMAT_VERSION = 1


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
    # Draft vocabulary: the head's LM head covers only this many target
    # tokens (the most frequent in its training data; ids in the weights
    # file as `draft_ids`). 0 = the target's whole vocabulary.
    draft_vocab_size: int = 0
    # Block heads: add the last context vector (position a-1) to every block
    # input, EAGLE-style, so the most recent target state need not be found
    # by attention first (much faster to train on a CPU budget).
    inject_last_context: bool = True
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    # Sequential Temperature Scaling, one entry per draft position
    # (engine/spec/training/calibrate.py): a temperature T or a pair
    # [T, shift], c -> sigmoid(logit(c) / T + shift), or a map that also
    # reads the peak of the draft distribution, {"confidence": a, "peak":
    # w, "bias": b}: sigmoid(a logit(c) + w logit(peak) + b). Fitted per sampling
    # temperature: {"0": [...], "1": [...]} (greedy requests use "0",
    # sampled ones the nearest other key); a plain list serves every
    # temperature; None = raw.
    calibration: dict[str, list] | list | None = None
    target: str = ""  # informational: what it was trained against
    training: dict = field(default_factory=dict)  # informational: how
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        self.aux_layers = tuple(int(i) for i in self.aux_layers)
        family = head_class(self.method)  # ValueError for a method no family registered
        if not self.aux_layers or any(not 0 <= i < self.target_num_layers for i in self.aux_layers):
            raise ValueError(f"aux_layers {self.aux_layers} must be non-empty layers of the target")
        if not 1 <= self.block_size <= 16 or self.num_layers < 1:
            raise ValueError("need 1 <= block_size <= 16 and num_layers >= 1")
        for entries in calibration_sets(self.calibration).values():
            if len(entries) != self.block_size:
                raise ValueError("calibration needs one entry per draft position")
            for entry in entries:
                position_map(entry)  # ValueError for a malformed entry
        if not 0 <= self.draft_vocab_size <= self.vocab_size:
            raise ValueError(f"draft_vocab_size must be in [0, {self.vocab_size}]")
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"head checkpoint format {self.format_version} is not {FORMAT_VERSION}")
        family.check_config(self)

    @property
    def feature_size(self) -> int:
        return len(self.aux_layers) * self.hidden_size

    @property
    def output_size(self) -> int:
        """Size of the head's own distribution (its draft vocabulary)."""
        return self.draft_vocab_size or self.vocab_size

    def calibration_for(self, temperature: float) -> list | None:
        """The STS entries fitted nearest to `temperature` (greedy = 0)."""
        return calibration_for(self.calibration, temperature)

    @classmethod
    def for_target(cls, method: str, target_config: ModelConfig, **overrides) -> "HeadConfig":
        """Defaults sized for `target`: attention geometry copied from it,
        EAGLE-3's low/middle/high layers, and the family's own defaults
        (layers, Markov rank: each head class's `config_defaults`)."""
        target = target_config
        n = target.num_layers
        low, mid, high = min(2, n - 1), n // 2, max(0, n - 3)
        values = dict(
            method=method, vocab_size=target.vocab_size, hidden_size=target.hidden_size,
            target_num_layers=n, aux_layers=tuple(sorted({low, mid, high})),
            num_heads=target.num_heads, num_kv_heads=target.num_kv_heads, head_dim=target.head_dim,
            intermediate_size=target.intermediate_size, rms_norm_eps=target.rms_norm_eps,
            rope_theta=target.rope_theta, rope_scaling=target.rope_scaling,
            max_position_embeddings=target.max_position_embeddings,
        )
        values.update(head_class(method).config_defaults)
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


class PositionMap(NamedTuple):
    """One draft position's calibration in logit space:
    logit(c') = confidence * logit(c) + peak * logit(p_max) + bias, with c
    the head's confidence and p_max the largest probability of the
    distribution the draft is drawn from (both known before the draw)."""

    confidence: float
    peak: float
    bias: float


PEAK_MAP_KEYS = ("confidence", "peak", "bias")


def position_map(entry) -> PositionMap:
    """The map of one position's calibration entry: a bare temperature T
    (1/T, 0, 0), a pair [T, shift] (1/T, 0, shift), or {"confidence": a,
    "peak": w, "bias": b}. ValueError for anything else."""
    if isinstance(entry, dict):
        if sorted(entry) != sorted(PEAK_MAP_KEYS):
            raise ValueError(f"calibration entry {entry!r} needs exactly the keys {PEAK_MAP_KEYS}")
        return PositionMap(*(_finite(entry[key], entry) for key in PEAK_MAP_KEYS))
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        temperature, shift = float(entry), 0.0
    elif isinstance(entry, (list, tuple)) and len(entry) == 2:
        temperature, shift = float(entry[0]), float(entry[1])
    else:
        raise ValueError(f"calibration entry {entry!r} is neither a temperature, [temperature, shift] "
                         f"nor a map of {PEAK_MAP_KEYS}")
    if not temperature > 0 or not math.isfinite(shift):
        raise ValueError(f"calibration entry {entry!r} needs a positive temperature and a finite shift")
    return PositionMap(1.0 / temperature, 0.0, shift)


def _finite(value, entry) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"calibration entry {entry!r} needs finite numbers")
    return float(value)


def calibration_for(calibration, temperature: float) -> list | None:
    """From a HeadConfig.calibration value: the set fitted nearest to
    `temperature` (a plain list serves every temperature; None: raw)."""
    if calibration is None or isinstance(calibration, list):
        return calibration
    return calibration[min(calibration, key=lambda key: abs(float(key) - temperature))]


def calibration_sets(calibration) -> dict[str, list]:
    """HeadConfig.calibration as {temperature key: temperatures}; a plain
    list (one set for every temperature) becomes {"*": list}."""
    if calibration is None:
        return {}
    if isinstance(calibration, list):
        return {"*": calibration}
    for key in calibration:
        float(key)  # ValueError for a key that is not a temperature
    return dict(calibration)


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
