"""What the server needs from an engine client, as one typing.Protocol.

`engine.client.AsyncEngineClient` (the real engine in a background thread)
and the server tests' `FakeEngineClient` both implement `EngineClient`;
`tests/server/test_engine_client.py` checks that their method signatures
match it, so the fake cannot drift from the real thing unnoticed.

This module imports no torch: the server types against it without loading
the engine.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from engine.outputs import EngineStats, RequestOutput
from scheduler.request import SamplingParams, StructuredOutput


@runtime_checkable
class PromptTokenizer(Protocol):
    """The tokenizer calls the server makes: chat template, encode, decode."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict],
                            add_generation_prompt: bool = True) -> str: ...

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """The templated conversation as ids; special-token text inside
        message content stays text (only the template's markers are control
        tokens)."""
        ...


@runtime_checkable
class EngineClient(Protocol):
    """An engine as the server sees it: lifecycle, limits, per-request streams.

    The limits are what a prompt must satisfy for the engine to serve it;
    the server checks them once, on the way in (server/validation.py), so
    that its 400s can name the offending request parameter.
    """

    tokenizer: PromptTokenizer
    model_name: str
    max_model_len: int  # prompt + output tokens of one request
    vocab_size: int  # prompt token ids must lie in [0, vocab_size)
    kv_cache_tokens: int  # KV capacity; a prompt plus one output token must fit
    device: str  # "cpu", "cuda", "cuda:1", ... (for device metrics)

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    @property
    def is_healthy(self) -> bool: ...

    def stats(self) -> EngineStats: ...

    def generate(self, request_id: str, prompt_token_ids: list[int],
                 params: SamplingParams) -> AsyncIterator[RequestOutput]:
        """Stream one request's outputs; closing the stream early aborts it."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def prepare_grammar(self, spec: StructuredOutput) -> None:
        """Compile a response_format's grammar (off the event loop); raise
        engine.structured.grammar.UnsupportedSchema naming what it cannot enforce."""
        ...

    def check_capacity(self, num_requests: int) -> None:
        """Raise QueueFullError unless `num_requests` more requests can be
        admitted now: one HTTP request's choices are admitted all or none,
        before any of them is submitted."""
        ...
