"""One streamed chat completion against an OpenAI-compatible server,
recorded event by event into a RequestResult (time to first token,
inter-token gaps, output tokens and where their count came from)."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx

from bench.sse import SSEEvent, SSEParser
from bench.stats import RequestResult

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class Target:
    """An OpenAI-compatible server under test and how to talk to it."""

    name: str
    base_url: str  # e.g. http://127.0.0.1:8000 (without /v1)
    model: str
    api_key: str | None = None
    # Fields that make this server generate exactly max_tokens, e.g.
    # {"ignore_eos": True}; peers without that flag can ban EOS via logit_bias.
    ignore_eos_body: dict = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)
    metrics_path: str | None = None  # Prometheus endpoint, e.g. "/metrics"


class StreamRecorder:
    """Turns a chat-completion SSE stream into one RequestResult, event by event."""

    def __init__(self, record: RequestResult, sent_at: float):
        self.record = record
        self.sent_at = sent_at
        self.text_parts: list[str] = []
        self.last_chunk_at: float | None = None
        self.usage_tokens: int | None = None
        self.done = False

    def on_event(self, event: SSEEvent, now: float) -> None:
        if event.data.strip() == "[DONE]":
            self.done = True
            return
        try:
            payload = json.loads(event.data)
        except json.JSONDecodeError:
            raise StreamError(f"undecodable SSE data: {event.data[:200]!r}") from None
        if isinstance(payload, dict) and payload.get("error"):
            raise StreamError(f"error event: {json.dumps(payload['error'])[:300]}")
        self._on_chunk(payload, now)

    def _on_chunk(self, chunk: dict, now: float) -> None:
        usage = chunk.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.usage_tokens = int(usage["completion_tokens"])
            self.record.prompt_tokens = usage.get("prompt_tokens")
        for choice in chunk.get("choices") or []:
            self.record.finish_reason = choice.get("finish_reason") or self.record.finish_reason
            text = _choice_text(choice)
            if text:
                self._on_text(text, now)

    def _on_text(self, text: str, now: float) -> None:
        if self.last_chunk_at is None:
            self.record.ttft = now - self.sent_at
        else:
            self.record.itl.append(now - self.last_chunk_at)
        self.last_chunk_at = now
        self.text_parts.append(text)

    def finish(self, now: float, count_tokens: TokenCounter | None) -> None:
        rec = self.record
        rec.e2e = now - self.sent_at
        if not self.done and rec.finish_reason is None:
            # Missing [DONE] alone is tolerated; a stream cut before any
            # finish_reason is not (llama-cpp-python drops interrupted ones so).
            raise StreamError("stream ended without a finish_reason or [DONE]")
        if self.usage_tokens is not None:
            rec.output_tokens, rec.token_count_source = self.usage_tokens, "usage"
        elif count_tokens is not None:
            rec.output_tokens = count_tokens("".join(self.text_parts))
            rec.token_count_source = "tokenizer"
        else:
            rec.output_tokens, rec.token_count_source = len(self.text_parts), "chunks"
        rec.ok = True


def _choice_text(choice: dict) -> str:
    delta = choice.get("delta") or {}
    # Reasoning models stream thoughts separately; they are output tokens too.
    return (delta.get("content") or "") + (delta.get("reasoning_content") or "") or (choice.get("text") or "")


class StreamError(Exception):
    """The server answered 200 but the stream itself reported or was an error."""


async def send_request(client: httpx.AsyncClient, target: Target, body: dict, record: RequestResult,
                       count_tokens: TokenCounter | None = None) -> None:
    """Stream one chat completion into `record` (ok, or error text)."""
    headers = {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}
    sent_at = time.perf_counter()
    recorder = StreamRecorder(record, sent_at)
    try:
        async with client.stream("POST", target.base_url + "/v1/chat/completions",
                                 json=body, headers=headers) as response:
            if response.status_code != 200:
                detail = (await response.aread()).decode("utf-8", "replace")
                record.error = f"HTTP {response.status_code}: {detail[:300]}"
                return
            await _consume(response, recorder)
            ended_at = time.perf_counter()  # before closing the connection
        recorder.finish(ended_at, count_tokens)
    except (httpx.HTTPError, StreamError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"[:400]


async def _consume(response: httpx.Response, recorder: StreamRecorder) -> None:
    parser = SSEParser()
    async for piece in response.aiter_text():
        now = time.perf_counter()
        for event in parser.feed(piece):
            recorder.on_event(event, now)
        if recorder.done:
            return  # do not wait for a server that keeps the connection open
    for event in parser.close():  # a last event without its blank line
        recorder.on_event(event, time.perf_counter())
