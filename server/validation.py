"""Validation: a chat or completion request -> prompt token ids + SamplingParams.

This is the one place a prompt is checked on its way to the engine: the
engine's limits (`max_model_len`, `vocab_size`, `kv_cache_tokens` of the
EngineClient) are applied here, once, so that every 400 names the request
parameter at fault (`messages` or `prompt`, `max_tokens`, ...). Shape and
type errors were already caught by the strict pydantic models in protocol.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from engine.interface import EngineClient
from scheduler.request import InvalidSamplingParams, SamplingParams, StructuredOutput
from server import errors
from server.limits import RequestLimits
from server.protocol import (ChatCompletionRequest, ChatMessage, CompletionRequest, GenerationRequest,
                             ResponseFormat)
from server.unsupported import check_unsupported

# SamplingParams fields a request may leave unset (None keeps their default).
_OPTIONAL_SAMPLING = ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                      "frequency_penalty", "repetition_penalty")

# Below this a temperature is greedy decoding: dividing logits by it would
# overflow float32 (1e-50 makes every probability NaN). vLLM uses the same bound.
MIN_SAMPLING_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class ValidatedPrompt:
    """One prompt the engine can serve: its ids, its text (for echo) and its
    output budget (max_tokens, or whatever context it leaves)."""

    token_ids: list[int]
    text: str
    max_tokens: int


@dataclass(frozen=True)
class ValidatedRequest:
    """A request ready to fan out: prompts, shared sampling parameters, `n`."""

    prompts: list[ValidatedPrompt]
    params: SamplingParams
    n: int

    @property
    def prompt_tokens(self) -> int:
        """Usage counts each prompt once, however many choices it has."""
        return sum(len(p.token_ids) for p in self.prompts)


class RequestValidator:
    """Checks requests against the served model and the engine's limits."""

    def __init__(self, engine: EngineClient, limits: RequestLimits | None = None):
        self.engine = engine
        self.limits = limits or RequestLimits()

    def check_model(self, model: str | None) -> None:
        """404 for a model name other than the served one (None means "any")."""
        if model is not None and model != self.engine.model_name:
            raise errors.model_not_found(model)

    def check_common(self, body: GenerationRequest) -> None:
        """Checks shared by both endpoints that need no tokenization."""
        self.check_model(body.model)
        check_unsupported(body, completion=isinstance(body, CompletionRequest))
        if body.stream_options is not None and not body.stream:
            raise errors.bad_request("stream_options is only allowed when stream is true",
                                     "stream_options")
        if body.specserve is not None and body.specserve.trace and not body.stream:
            raise errors.bad_request("specserve.trace is only allowed when stream is true",
                                     "specserve.trace")
        self._check_choices(1 if isinstance(body, ChatCompletionRequest)
                            else _num_prompts(body.prompt), body)

    def _check_choices(self, num_prompts: int, body: GenerationRequest) -> None:
        """The fan-out limits: prompts per request, and prompts x n."""
        limits = self.limits
        if num_prompts > limits.max_prompts:
            raise errors.bad_request(
                f"prompt holds {num_prompts} prompts; this server takes at most "
                f"{limits.max_prompts} per request", "prompt")
        if num_prompts * body.n > limits.max_choices:
            raise errors.bad_request(
                f"this request asks for {num_prompts * body.n} completions ({num_prompts} "
                f"prompt(s) x n={body.n}); this server makes at most {limits.max_choices} "
                "per request", "n")

    def chat(self, body: ChatCompletionRequest) -> ValidatedRequest:
        """Template and tokenize the messages; check them and the options."""
        if body.top_logprobs is not None and not body.logprobs:
            raise errors.bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
        ids = self._chat_prompt(body.messages)
        requested, param = ((body.max_completion_tokens, "max_completion_tokens")
                            if body.max_completion_tokens is not None
                            else (body.max_tokens, "max_tokens"))
        limit = self._budget(requested, len(ids), "messages", param)
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = self._sampling_params(body, limit, k)
        # The rules the engine used to apply itself come last, in its order.
        if not ids:
            raise errors.bad_request("the chat template produced an empty prompt", "messages")
        self._check_kv_fit(ids, "messages")
        self._check_vocabulary(ids, "messages")
        return ValidatedRequest([ValidatedPrompt(ids, "", limit)], params, body.n)

    def completion(self, body: CompletionRequest) -> ValidatedRequest:
        """Normalise the prompt forms to token ids; check them and the options."""
        if body.echo and body.logprobs is not None:
            raise errors.bad_request("echo together with logprobs is not supported", "echo")
        pairs = self._completion_prompts(body.prompt)
        # Every prompt must fit; without max_tokens each fills its own context.
        limits = [self._budget(body.max_tokens, len(ids), "prompt", "max_tokens")
                  for ids, _ in pairs]
        params = self._sampling_params(body, min(limits), body.logprobs)
        for ids, _ in pairs:
            self._check_kv_fit(ids, "prompt")
        prompts = [ValidatedPrompt(ids, text, limit) for (ids, text), limit in zip(pairs, limits)]
        return ValidatedRequest(prompts, params, body.n)

    # -- prompts

    def _chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        # encode_chat keeps special-token text inside message content as text:
        # only the template's own markers become control tokens.
        turns = [_template_turn(m) for m in messages]
        try:
            return self.engine.tokenizer.encode_chat(turns, add_generation_prompt=True)
        except ValueError as exc:
            raise errors.bad_request(f"Cannot apply the chat template: {exc}", "messages")

    def _completion_prompts(self, prompt: Any) -> list[tuple[list[int], str]]:
        """The four prompt forms -> (token ids, text) pairs, none empty."""
        if isinstance(prompt, str):
            prompt = [prompt]
        if not prompt:
            raise errors.bad_request("prompt must not be empty", "prompt")
        if isinstance(prompt[0], int):
            prompt = [prompt]
        pairs = [self._one_prompt(p) for p in prompt]
        if any(not ids for ids, _ in pairs):
            raise errors.bad_request("prompt must not be empty", "prompt")
        return pairs

    def _one_prompt(self, prompt: str | list[int]) -> tuple[list[int], str]:
        tokenizer = self.engine.tokenizer
        if isinstance(prompt, str):
            ids = tokenizer.encode(prompt, add_special_tokens=False)
            self._check_vocabulary(ids, "prompt")
            return ids, prompt
        self._check_vocabulary(prompt, "prompt")  # first: out-of-range ids do not decode
        return list(prompt), tokenizer.decode(prompt)

    def _check_vocabulary(self, ids: Sequence[int], param: str) -> None:
        vocab = self.engine.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            what = "prompt token ids" if param in ("prompt", "messages") else param
            raise errors.bad_request(f"{what} must be in [0, {vocab})", param)

    # -- lengths

    def _budget(self, requested: int | None, prompt_len: int, prompt_param: str,
                param: str) -> int:
        """The output budget: `requested`, or all the context the prompt leaves."""
        context = self.engine.max_model_len
        room = context - prompt_len
        if room < 1:
            raise errors.bad_request(
                f"This model's maximum context length is {context} tokens, but the prompt "
                f"has {prompt_len} tokens, leaving no room to generate.", prompt_param)
        if requested is None:
            return room
        if requested > room:
            raise errors.bad_request(
                f"This model's maximum context length is {context} tokens. However, you "
                f"requested {prompt_len + requested} tokens ({prompt_len} in the prompt, "
                f"{requested} for the completion).", param)
        return requested

    def _check_kv_fit(self, ids: list[int], prompt_param: str) -> None:
        # The KV cache may be smaller than the context (--kv-cache-tokens);
        # a prompt it cannot hold would wait forever.
        capacity = self.engine.kv_cache_tokens
        if len(ids) + 1 > capacity:
            raise errors.bad_request(
                f"the prompt does not fit in the KV cache: it has {len(ids)} tokens, the "
                f"cache holds {capacity}, with at least one for the output", prompt_param)

    # -- sampling

    def _sampling_params(self, body: GenerationRequest, max_tokens: int,
                         logprobs: int | None) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
        self._check_vocabulary(body.stop_token_ids or (), "stop_token_ids")
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens, "stop": tuple(stop), "logprobs": logprobs,
            "stop_token_ids": tuple(body.stop_token_ids or ()), "ignore_eos": body.ignore_eos,
            "seed": body.seed, "speculative": body.speculative,
            "logit_bias": self._logit_bias(body.logit_bias or {}),
            "structured": structured_output(body.response_format),
        }
        for name in _OPTIONAL_SAMPLING:
            value = getattr(body, name)
            if value is not None:  # None keeps SamplingParams' (OpenAI's) default
                kwargs[name] = value
        if kwargs.get("temperature", 1.0) < MIN_SAMPLING_TEMPERATURE:
            kwargs["temperature"] = 0.0
        try:
            return SamplingParams(**kwargs)
        except InvalidSamplingParams as exc:
            raise errors.bad_request(str(exc), exc.param)


    def _logit_bias(self, bias: dict[str, float]) -> tuple[tuple[int, float], ...]:
        """{"123": 5.0} -> ((123, 5.0),): ids must be decimal and in the vocabulary."""
        if not all(key.isascii() and key.isdigit() for key in bias):
            raise errors.bad_request("logit_bias keys must be token ids written in decimal", "logit_bias")
        pairs = tuple(sorted((int(key), float(value)) for key, value in bias.items()))
        vocab = self.engine.vocab_size
        if any(token >= vocab for token, _ in pairs):
            raise errors.bad_request(f"logit_bias token ids must be in [0, {vocab})", "logit_bias")
        return pairs


def structured_output(response_format: ResponseFormat | None) -> StructuredOutput | None:
    """OpenAI's response_format as the engine's plain-data StructuredOutput
    (None for free text). The schema keeps the user's key order: properties
    are generated in it."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return StructuredOutput("json_object")
    spec = response_format.json_schema
    return StructuredOutput("json_schema", json.dumps(spec.schema_), bool(spec.strict))


def _num_prompts(prompt: Any) -> int:
    """How many prompts a completions `prompt` holds (a list of ids is one)."""
    if isinstance(prompt, str) or not prompt or isinstance(prompt[0], int):
        return 1
    return len(prompt)


def _template_turn(message: ChatMessage) -> dict[str, Any]:
    # Templates know system/user/assistant/tool; "developer" is OpenAI's new
    # name for the system role.
    role = "system" if message.role == "developer" else message.role
    turn: dict[str, Any] = {"role": role, "content": message.text()}
    if message.name is not None:
        turn["name"] = message.name
    if message.tool_call_id is not None:
        turn["tool_call_id"] = message.tool_call_id
    return turn
