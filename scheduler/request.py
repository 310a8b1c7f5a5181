"""A generation request as the scheduler and engine see it (no torch).

One token-count rule drives everything: a request owns `all_token_ids`
(prompt + output) and `num_computed_tokens` (how many of them already have
KV in the cache). The scheduler closes the gap; drafts (`drafts`)
extend the gap by the tokens the target should verify this step.
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from scheduler.drafts import NO_DRAFTS, DraftBlock


class RequestStatus(enum.Enum):
    """Lifecycle of a request inside the engine."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def is_finished(self) -> bool:
        return self in _FINISHED

    @property
    def finish_reason(self) -> str | None:
        """OpenAI finish_reason ('stop' / 'length' / 'abort'), None while live."""
        return self.value if self.is_finished else None


_FINISHED = {RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH,
             RequestStatus.FINISHED_ABORTED}


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings, validated on construction.

    `top_k <= 0` disables top-k. `logprobs` is the number of top alternatives
    to return per token (0 = only the chosen token's logprob, None = none).
    `speculative=False` opts this request out of speculative decoding.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    max_tokens: int = 16
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    speculative: bool = True
    # OpenAI logit_bias as sorted (token id, bias) pairs, added to the logits
    # of every sampled, verified and drafted row (engine/sampler.py).
    logit_bias: tuple[tuple[int, float], ...] = ()
    # A grammar the output must follow (response_format json_object /
    # json_schema); the engine compiles and enforces it (engine/structured/).
    structured: "StructuredOutput | None" = None

    def __post_init__(self) -> None:
        _check(self.temperature >= 0, "temperature", "must be >= 0")
        _check(0 < self.top_p <= 1, "top_p", "must be in (0, 1]")
        _check(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]")
        _check(-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
        _check(-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
        _check(self.repetition_penalty > 0, "repetition_penalty", "must be > 0")
        _check(self.max_tokens >= 1, "max_tokens", "must be >= 1")
        _check(self.logprobs is None or 0 <= self.logprobs <= 20, "logprobs", "must be in [0, 20]")
        _check(len(self.logit_bias) <= MAX_LOGIT_BIAS, "logit_bias", f"may hold at most {MAX_LOGIT_BIAS} tokens")
        _check(all(token >= 0 and -100 <= bias <= 100 for token, bias in self.logit_bias), "logit_bias",
               "maps token ids >= 0 to biases in [-100, 100]")
        _check(self.structured is None or not self.ignore_eos, "ignore_eos",
               "cannot be combined with response_format: the grammar ends the output")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def has_penalties(self) -> bool:
        return (self.presence_penalty != 0 or self.frequency_penalty != 0
                or self.repetition_penalty != 1)


MAX_LOGIT_BIAS = 300  # OpenAI's limit on logit_bias entries


@dataclass(frozen=True)
class StructuredOutput:
    """A response_format the output must follow, as plain data.

    `kind` is "json_object" (any JSON object) or "json_schema" (`schema`
    holds the schema as JSON text, keys in the user's order: properties are
    generated in that order; equal texts share one compiled grammar). `strict` is OpenAI's flag: properties the
    schema does not list are then forbidden even without
    `additionalProperties: false`.
    """

    kind: str
    schema: str | None = None
    strict: bool = False

    def __post_init__(self) -> None:
        _check(self.kind in ("json_object", "json_schema"), "response_format",
               "type must be json_object or json_schema")
        _check((self.schema is not None) == (self.kind == "json_schema"), "response_format",
               "json_schema needs a schema (and json_object takes none)")


class InvalidSamplingParams(ValueError):
    """Raised for an out-of-range sampling parameter; `param` names it."""

    def __init__(self, param: str, message: str):
        super().__init__(f"{param} {message}")
        self.param = param


def _check(ok: bool, param: str, message: str) -> None:
    if not ok:
        raise InvalidSamplingParams(param, message)


@dataclass
class Request:
    """Mutable state of one sequence being generated."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_id: int | None = None
    arrival_time: float = field(default_factory=time.monotonic)
    output_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    # Drafts proposed for verification in the next step (empty when none).
    drafts: DraftBlock = NO_DRAFTS
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    # Speculation statistics for this request (reported in usage).
    num_spec_steps: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_token_ids) + len(self.output_token_ids)

    @property
    def all_token_ids(self) -> list[int]:
        return self.prompt_token_ids + self.output_token_ids

    def token_ids(self, start: int, end: int | None = None) -> list[int]:
        """`all_token_ids[start:end]` without copying the whole sequence
        (called per request per step on the hot path)."""
        num_prompt = len(self.prompt_token_ids)
        end = self.num_tokens if end is None else min(end, self.num_tokens)
        if end <= num_prompt:
            return self.prompt_token_ids[start:end]
        if start >= num_prompt:
            return self.output_token_ids[start - num_prompt:end - num_prompt]
        return self.prompt_token_ids[start:] + self.output_token_ids[:end - num_prompt]

    @property
    def last_token_id(self) -> int:
        return self.output_token_ids[-1] if self.output_token_ids else self.prompt_token_ids[-1]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
