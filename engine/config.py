"""Frozen, validated configuration records for the engine."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a Llama-family decoder (Llama, SmolLM2, Qwen2, Qwen3)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # As in HF config.json: None, or {"rope_type": "llama3"|"linear"|"dynamic"|"yarn", ...}
    rope_scaling: dict | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # biases on the q/k/v projections
    attention_output_bias: bool = False  # a bias on o_proj too (Llama's attention_bias; not Qwen2)
    qk_norm: bool = False  # Qwen3 normalises q and k per head
    architecture: str = "llama"

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")
        for name in ("vocab_size", "hidden_size", "num_layers", "head_dim"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")



@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache geometry."""

    block_size: int = 16
    num_blocks: int = 1024

    def __post_init__(self) -> None:
        if self.block_size <= 0 or self.num_blocks <= 0:
            raise ValueError("block_size and num_blocks must be positive")

    @property
    def num_tokens(self) -> int:
        return self.block_size * self.num_blocks


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous-batching limits."""

    max_num_seqs: int = 32
    max_num_batched_tokens: int = 512
    max_model_len: int = 2048
    max_waiting: int = 256  # beyond this new requests get 429

    def __post_init__(self) -> None:
        if self.max_num_seqs <= 0 or self.max_num_batched_tokens <= 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be positive")
        if self.max_model_len <= 1:
            raise ValueError("max_model_len must be > 1")


DATASTORE_METHODS = ("ngram", "hybrid")  # the methods whose n-gram drafter reads --ngram-datastore
DATASTORE_AUTO = "auto"  # --ngram-datastore auto: the bundled datastore of the served tokenizer, if any


@dataclass(frozen=True)
class SpeculativeConfig:
    """Which drafter to use and how many tokens it may propose per step."""

    method: str = "none"
    num_speculative_tokens: int = 4
    draft_model: str | None = None
    ngram_min: int = 1
    ngram_max: int = 4
    # A corpus datastore (engine/spec/datastore.py) that n-gram and the
    # hybrid draft from where prompt lookup finds no match: a path, "auto"
    # (the bundled one of the model's tokenizer, if any) or None.
    ngram_datastore: str | None = None
    # Greedy token trees: n-gram's block carries the other source's block as
    # an alternative branch; a step verifies both (engine/spec/tree.py).
    ngram_alternatives: bool = False
    self_draft_layers: int = 0  # 0 = auto (a third of the target's layers)
    policy: str = "adaptive"

    def __post_init__(self) -> None:
        # The registries are the one list of methods and policies; imported
        # here, not at module level, because drafters import this module.
        from engine.spec.registry import NONE, drafter_spec
        from scheduler.policies import OFF, policy_spec

        if self.policy != OFF:
            policy_spec(self.policy)  # raises for an unknown name
        if self.method != NONE and drafter_spec(self.method).needs_draft_model and not self.draft_model:
            raise ValueError(f"--draft-model PATH is required with --speculative-method {self.method}")
        if not 1 <= self.num_speculative_tokens <= 16:
            raise ValueError("num_speculative_tokens must be in [1, 16]")
        if not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError("need 1 <= ngram_min <= ngram_max")
        if self.ngram_datastore not in (None, DATASTORE_AUTO) and self.method not in DATASTORE_METHODS:
            raise ValueError(f"--ngram-datastore drafts for {' and '.join(DATASTORE_METHODS)} only, "
                             f"not --speculative-method {self.method}")
        if self.ngram_alternatives and self.method != "ngram":
            raise ValueError(f"--ngram-alternatives branches n-gram's drafts only, not --speculative-method "
                             f"{self.method}")

    @property
    def enabled(self) -> bool:
        return self.method != "none" and self.policy != "off"


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs to start."""

    model: str
    dtype: str = "auto"  # auto: bfloat16 where the hardware has fast bf16, else float32 (engine/device.py)
    device: str = "cpu"
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    served_model_name: str | None = None
    seed: int = 0
    # A token's logits do not depend on the batch computing it (bitwise), so
    # speculation stays lossless in any dtype; off trades that for speed.
    batch_invariant: bool = True
    # Replay decode/verification steps from CUDA graphs (engine/cuda_graphs.py);
    # None: on for CUDA devices, off elsewhere. True on a CPU is an error.
    cuda_graphs: bool | None = None
    # Machine counters (NVML on CUDA, run-queue wait on CPU) tell the
    # verification policy how much of the machine others hold. Off, the
    # policy prices no outside load: tests turn them off so that what they
    # verify does not depend on what else runs on the machine.
    machine_counters: bool = True

    def __post_init__(self) -> None:
        if self.dtype not in ("auto", "float32", "float16", "bfloat16", "float64"):
            raise ValueError(f"unsupported dtype {self.dtype!r}")
