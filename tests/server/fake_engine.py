"""A small stand-in for engine.client.AsyncEngineClient (an EngineClient too).

Tokens are UTF-8 bytes shifted by 3 (ids 0-2 are pad/bos/eos). Generation
is echo-like: output token j is prompt token (offset + j) mod len(prompt),
with offset 0 when greedy and drawn from the seed otherwise. One "step"
emits one or two tokens (two when the request speculates and the step is
odd), so speculation counters move. Options simulate a full queue, a dead
engine, or a crash after some tokens.
"""
from __future__ import annotations

import asyncio
import codecs
import json
import random
from typing import AsyncIterator

from engine.outputs import EngineDeadError, EngineStats, QueueFullError, RequestOutput, SourceCounts
from scheduler.output import TokenLogprob
from engine.structured.grammar import check_enforceable
from scheduler.request import SamplingParams, StructuredOutput

PAD, BOS, EOS = 0, 1, 2
_SHIFT = 3


class FakeTokenizer:
    """Byte-level tokenizer with a ChatML template, like SmolLM2's in shape."""

    eos_token_id = EOS

    def __len__(self) -> int:
        return 256 + _SHIFT

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [b + _SHIFT for b in text.encode("utf-8")]
        return [BOS] + ids if add_special_tokens else ids

    def decode(self, ids: list[int]) -> str:
        return bytes(i - _SHIFT for i in ids if i >= _SHIFT).decode("utf-8", errors="replace")

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        parts = []
        for m in messages:
            if not isinstance(m.get("content"), str):
                raise ValueError("content must be a string")
            parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        # Byte-level: this tokenizer has no special tokens for content to forge.
        return self.encode(self.apply_chat_template(messages, add_generation_prompt))


class _StopMatcher:
    """Incremental stop-string handling: holds back text that may start a stop."""

    def __init__(self, stops: tuple[str, ...]):
        self._stops = stops
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Return (text safe to emit, stopped)."""
        buf = self._pending + text
        hits = [buf.find(s) for s in self._stops if s in buf]
        if hits:
            self._pending = ""
            return buf[: min(hits)], True
        keep = max((k for s in self._stops for k in range(1, len(s))
                    if buf.endswith(s[:k])), default=0)
        self._pending = buf[len(buf) - keep:] if keep else ""
        return buf[: len(buf) - keep], False

    def flush(self) -> str:
        out, self._pending = self._pending, ""
        return out


class FakeEngineClient:
    """Echo-like engine implementing engine.interface.EngineClient, for server tests."""

    async def prepare_grammar(self, spec: StructuredOutput) -> None:
        """Refuses what the real engine refuses before compiling (no grammar is enforced here)."""
        if spec.schema is not None:
            check_enforceable(json.loads(spec.schema))

    def __init__(self, *, model_name: str = "fake-model", max_model_len: int = 512,
                 step_delay: float = 0.002, queue_full: bool = False, dead: bool = False,
                 fail_after: int | None = None, spec_tokens: int = 2,
                 kv_cache_tokens: int = 8192):
        self.tokenizer = FakeTokenizer()
        self.model_name = model_name
        self.max_model_len = max_model_len
        self.vocab_size = len(self.tokenizer)
        self.kv_cache_tokens = kv_cache_tokens  # not modelled: only checked on the way in
        self.device = "cpu"
        self.step_delay = step_delay
        self.queue_full = queue_full
        self.dead = dead
        self.fail_after = fail_after
        self.spec_tokens = spec_tokens
        self.started = False
        self.stopped = False
        self.running: set[str] = set()
        self.submitted: list[tuple[str, list[int], SamplingParams]] = []
        self.attempted: list[str] = []  # every generate() started, admitted or not
        self.aborted: list[str] = []
        self._stats = EngineStats()

    async def start(self) -> None:
        self.started = True

    async def shutdown(self) -> None:
        self.stopped = True

    @property
    def is_healthy(self) -> bool:
        return not self.dead

    def stats(self) -> EngineStats:
        self._stats.num_running = len(self.running)
        self._stats.kv_cache_usage = min(1.0, len(self.running) / 8)
        return self._stats

    def check_capacity(self, num_requests: int) -> None:
        if self.queue_full:
            raise QueueFullError("waiting queue full")

    async def abort(self, request_id: str) -> None:
        if request_id in self.running:
            self.running.discard(request_id)
            self.aborted.append(request_id)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        self.attempted.append(request_id)
        if self.dead:
            raise EngineDeadError("engine loop is dead")
        if self.queue_full:
            raise QueueFullError("waiting queue full")
        self.submitted.append((request_id, list(prompt_token_ids), params))
        self.running.add(request_id)
        self._stats.prompt_tokens += len(prompt_token_ids)
        run = _Run(self, request_id, prompt_token_ids, params)
        try:
            async for out in run.steps():
                yield out
        finally:
            if request_id in self.running:  # consumer left early: abort
                self.running.discard(request_id)
                self.aborted.append(request_id)


class _Run:
    """One fake request being generated."""

    def __init__(self, engine: FakeEngineClient, request_id: str, prompt: list[int],
                 params: SamplingParams):
        self.e, self.rid, self.prompt, self.p = engine, request_id, prompt, params
        rng = random.Random(params.seed)
        self.offset = 0 if params.greedy else rng.randrange(len(prompt))
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.stops = _StopMatcher(params.stop)
        self.generated: list[int] = []
        self.spec_steps = self.drafts = self.accepted = 0

    def _token(self) -> int:
        return self.prompt[(self.offset + len(self.generated)) % len(self.prompt)]

    def _logprob(self, token: int) -> TokenLogprob:
        lp = -0.1 * (token % 7) - 0.01
        top = [(token, lp)] + [(token + k, lp - k) for k in range(1, 20)]
        return TokenLogprob(token, lp, top[: self.p.logprobs or 0])

    async def steps(self) -> AsyncIterator[RequestOutput]:
        step = 0
        while True:
            await asyncio.sleep(self.e.step_delay)
            step += 1
            count = 2 if self._speculating() and step % 2 else 1
            out = self._emit(count)
            yield out
            if out.finished:
                self.e.running.discard(self.rid)
                return

    def _speculating(self) -> bool:
        return self.p.speculative and self.e.spec_tokens > 0

    def _emit(self, count: int) -> RequestOutput:
        new, reason = [], None
        for _ in range(count):
            if self.e.fail_after is not None and len(self.generated) >= self.e.fail_after:
                self.e.dead = True
                raise EngineDeadError("fake engine crashed")
            token = self._token()
            self.generated.append(token)
            new.append(token)
            reason = self._stop_reason(token)
            if reason:
                break
        text, stopped = self.stops.feed(self.decoder.decode(bytes(
            t - _SHIFT for t in new if t >= _SHIFT)))
        if stopped:
            reason = "stop"
        elif reason:
            text += self.stops.flush()
        self._count_spec(len(new))
        return self._output(new, text, reason)

    def _stop_reason(self, token: int) -> str | None:
        if token in self.p.stop_token_ids:
            return "stop"
        if token == EOS and not self.p.ignore_eos:
            return "stop"
        if len(self.generated) >= self.p.max_tokens:
            return "length"
        return None

    def _count_spec(self, emitted: int) -> None:
        if not self._speculating():
            return
        self.spec_steps += 1
        self.drafts += self.e.spec_tokens
        self.accepted += emitted - 1
        s = self.e._stats
        s.num_drafts += 1
        s.num_draft_tokens += self.e.spec_tokens
        s.num_accepted_tokens += emitted - 1
        s.spec_by_source.setdefault("fake", SourceCounts()).record(self.e.spec_tokens, emitted - 1)
        if len(s.accepted_per_position) < self.e.spec_tokens:
            s.accepted_per_position.extend([0] * (self.e.spec_tokens - len(s.accepted_per_position)))
        for pos in range(emitted - 1):
            s.accepted_per_position[pos] += 1

    def _output(self, new: list[int], text: str, reason: str | None) -> RequestOutput:
        self.e._stats.generation_tokens += len(new)
        logprobs = [self._logprob(t) for t in new] if self.p.logprobs is not None else None
        return RequestOutput(
            request_id=self.rid, new_token_ids=new, new_text=text,
            finished=reason is not None, finish_reason=reason,
            num_prompt_tokens=len(self.prompt), num_output_tokens=len(self.generated),
            logprobs=logprobs, num_spec_steps=self.spec_steps,
            num_draft_tokens=self.drafts, num_accepted_tokens=self.accepted)
