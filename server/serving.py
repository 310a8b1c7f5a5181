"""The OpenAI protocol on top of the engine client.

Serving turns a validated request into engine requests (chat template,
tokenization, context checks, sampling parameters, one engine request per
choice), merges what the engine streams back, and frames it as a JSON
response or as Server-Sent Events. It also owns the client-disconnect path:
as soon as the client goes away, the engine requests are cancelled, which
makes the engine abort them and free their KV blocks.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from engine.outputs import EngineDeadError, QueueFullError, RequestOutput
from scheduler.request import InvalidSamplingParams, SamplingParams
from server import errors
from server.errors import APIError
from server.metrics import ServerMetrics
from server.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    ModelCard,
    ModelList,
    _GenerationRequest,
)

logger = logging.getLogger(__name__)

_END = object()  # a pump's marker: its engine request yields nothing more


class ClientDisconnected(Exception):
    """The HTTP client went away before the response was complete."""


# ------------------------------------------------------------ disconnects


async def wait_for_disconnect(receive: Callable[[], Awaitable[dict]]) -> None:
    """Return once the ASGI server reports that the client has gone.

    The request body was already read, so the next message the server hands
    out is `http.disconnect`; waiting on it costs nothing and wakes at once.
    """
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(request: Request, work: Awaitable[Any]) -> Any:
    """Await `work`, cancelling it and raising ClientDisconnected if the client leaves."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(wait_for_disconnect(request.receive))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (task, watcher):
            if not t.done():
                t.cancel()
        await asyncio.gather(task, watcher, return_exceptions=True)
    if task.cancelled():
        raise ClientDisconnected()
    return task.result()


class SSEResponse(StreamingResponse):
    """A text/event-stream response that stops at once when the client leaves.

    Starlette's StreamingResponse notices a disconnect only on some ASGI
    versions or at the next failed send; a stream that is still queued in
    the engine sends nothing for a while, so we watch `receive` ourselves
    and cancel the event generator, then run `on_close` (which aborts the
    engine requests).
    """

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], Awaitable[None]]):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await send({"type": "http.response.start", "status": self.status_code,
                        "headers": self.raw_headers})
            sender = asyncio.ensure_future(self._send_events(send))
            watcher = asyncio.ensure_future(wait_for_disconnect(receive))
            try:
                await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in (sender, watcher):
                    t.cancel()
                results = await asyncio.gather(sender, watcher, return_exceptions=True)
            _raise_unexpected(results[0])
        except OSError:
            logger.debug("client went away during a stream")
        finally:
            await self.body_iterator.aclose()
            await self._on_close()

    async def _send_events(self, send: Any) -> None:
        async for event in self.body_iterator:
            await send({"type": "http.response.body", "body": event.encode(), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _raise_unexpected(result: Any) -> None:
    # A failed send (OSError) means the client left: not an error of ours.
    if isinstance(result, BaseException) and not isinstance(
            result, (asyncio.CancelledError, OSError)):
        raise result


def sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


# ------------------------------------------------------------ engine fan-out


@dataclass
class _Job:
    """One engine request: the choice it feeds and what to generate."""

    index: int
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    prompt_text: str = ""


class _Fanout:
    """Runs one engine request per choice and merges their outputs as they come.

    Each request is pumped by its own task into one queue, so choices
    interleave in arrival order. `close()` cancels the pumps; cancelling an
    engine generator makes the engine abort the request, and requests still
    live are aborted explicitly as well, in case the generator was never
    started or ignores cancellation.
    """

    def __init__(self, engine: Any, jobs: list[_Job], metrics: ServerMetrics):
        self._engine = engine
        self._jobs = jobs
        self._metrics = metrics
        self._queue: asyncio.Queue = asyncio.Queue()
        self._primed: list[tuple[int, Any]] = []
        self._live = {job.request_id for job in jobs}
        self._tasks = [asyncio.ensure_future(self._pump(job)) for job in jobs]

    async def _pump(self, job: _Job) -> None:
        tracker = self._metrics.tracker()
        stream = self._engine.generate(job.request_id, job.prompt_ids, job.params)
        try:
            async for out in stream:
                tracker.observe(out)
                if out.finished:
                    self._live.discard(job.request_id)
                self._queue.put_nowait((job.index, out))
        except Exception as exc:  # handed to the consumer, which maps it to a status
            self._queue.put_nowait((job.index, exc))
            return
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        self._live.discard(job.request_id)
        self._queue.put_nowait((job.index, _END))

    async def prime(self) -> None:
        """Wait for every request's first output so that errors such as a full
        queue can still be reported as an HTTP status, before any byte is sent."""
        seen: set[int] = set()
        while len(seen) < len(self._jobs):
            item = await self._next()
            self._primed.append(item)
            seen.add(item[0])

    async def _next(self) -> tuple[int, Any]:
        index, value = await self._queue.get()
        if isinstance(value, BaseException):
            raise value
        return index, value

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        """Yield (choice index, output) until every request has ended."""
        ended = 0
        while ended < len(self._jobs):
            if self._primed:
                index, value = self._primed.pop(0)
            else:
                index, value = await self._next()
            if value is _END:
                ended += 1
            else:
                yield index, value

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for request_id in list(self._live):
            try:
                await self._engine.abort(request_id)
            except Exception:  # already gone: nothing to free
                logger.debug("abort of %s failed", request_id, exc_info=True)
        self._live.clear()


def _map_engine_error(exc: BaseException) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return errors.queue_full()
    if isinstance(exc, EngineDeadError):
        return errors.engine_dead()
    if isinstance(exc, InvalidSamplingParams):
        return errors.bad_request(str(exc), exc.param)
    if isinstance(exc, ValueError):  # the engine's verdict on this request (prompt, ids)
        return errors.bad_request(str(exc))
    logger.error("engine request failed", exc_info=exc)
    return errors.internal_error()


# ------------------------------------------------------------ per-choice state


@dataclass
class _Choice:
    """What one choice has produced so far."""

    text: str = ""
    finish_reason: str | None = None
    logprobs: list[Any] = field(default_factory=list)
    last: RequestOutput | None = None
    text_offset: int = 0  # legacy completions logprobs: next token's offset


def _usage(choices: list[_Choice], prompt_tokens: int) -> dict[str, Any]:
    completion = sum(c.last.num_output_tokens for c in choices if c.last)
    usage: dict[str, Any] = {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                             "total_tokens": prompt_tokens + completion}
    steps = sum(c.last.num_spec_steps for c in choices if c.last)
    if steps:
        accepted = sum(c.last.num_accepted_tokens for c in choices if c.last)
        usage["speculative"] = {
            "draft_tokens": sum(c.last.num_draft_tokens for c in choices if c.last),
            "accepted_tokens": accepted,
            "steps": steps,
            "mean_accepted_length": round(1.0 + accepted / steps, 4),
        }
    return usage


# ------------------------------------------------------------ renderers


class _TokenText:
    """Token id -> its text, cached (logprobs need one decode per token)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._cache.get(token_id)
        if text is None:
            text = self._cache[token_id] = self._tokenizer.decode([token_id])
        return text


@dataclass
class _Base:
    """Fields every response and chunk carries."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


class _ChatRenderer:
    """OpenAI chat.completion / chat.completion.chunk shapes."""

    object = "chat.completion"
    chunk_object = "chat.completion.chunk"

    def __init__(self, token_text: _TokenText, want_logprobs: bool):
        self._text = token_text
        self._want_logprobs = want_logprobs

    def _entry(self, lp: Any) -> dict[str, Any]:
        token = self._text(lp.token_id)
        return {"token": token, "logprob": lp.logprob, "bytes": list(token.encode()),
                "top_logprobs": [self._top(tid, val) for tid, val in lp.top]}

    def _top(self, token_id: int, logprob: float) -> dict[str, Any]:
        token = self._text(token_id)
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def logprob_entries(self, out: RequestOutput, state: _Choice) -> list[dict[str, Any]]:
        return [self._entry(lp) for lp in out.logprobs or ()]

    def opening(self, index: int, job: _Job) -> dict[str, Any] | None:
        return {"index": index, "delta": {"role": "assistant", "content": ""},
                "logprobs": None, "finish_reason": None}

    def delta(self, index: int, text: str, entries: list) -> dict[str, Any] | None:
        if not text and not entries:
            return None
        logprobs = {"content": entries} if self._want_logprobs else None
        return {"index": index, "delta": {"content": text}, "logprobs": logprobs,
                "finish_reason": None}

    def closing(self, index: int, reason: str | None) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": reason}

    def choice(self, job: _Job, state: _Choice) -> dict[str, Any]:
        logprobs = {"content": state.logprobs} if self._want_logprobs else None
        return {"index": job.index, "message": {"role": "assistant", "content": state.text},
                "logprobs": logprobs, "finish_reason": state.finish_reason}


class _CompletionRenderer:
    """Legacy text_completion shapes (responses and chunks look alike)."""

    object = "text_completion"
    chunk_object = "text_completion"

    def __init__(self, token_text: _TokenText, logprobs: int | None, echo: bool):
        self._text = token_text
        self._k = logprobs
        self._echo = echo

    def logprob_entries(self, out: RequestOutput, state: _Choice) -> list[dict[str, Any]]:
        entries = []
        for lp in out.logprobs or ():
            token = self._text(lp.token_id)
            top = {self._text(tid): val for tid, val in lp.top[: self._k]} if self._k else None
            entries.append((token, lp.logprob, top, state.text_offset))
            state.text_offset += len(token)
        return entries

    def _legacy(self, entries: list) -> dict[str, Any] | None:
        if self._k is None:
            return None
        return {"tokens": [e[0] for e in entries], "token_logprobs": [e[1] for e in entries],
                "top_logprobs": [e[2] for e in entries], "text_offset": [e[3] for e in entries]}

    def opening(self, index: int, job: _Job) -> dict[str, Any] | None:
        if not self._echo:
            return None
        return {"index": index, "text": job.prompt_text, "logprobs": None, "finish_reason": None}

    def delta(self, index: int, text: str, entries: list) -> dict[str, Any] | None:
        if not text and not entries:
            return None
        return {"index": index, "text": text, "logprobs": self._legacy(entries),
                "finish_reason": None}

    def closing(self, index: int, reason: str | None) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": reason}

    def choice(self, job: _Job, state: _Choice) -> dict[str, Any]:
        text = (job.prompt_text + state.text) if self._echo else state.text
        return {"index": job.index, "text": text, "logprobs": self._legacy(state.logprobs),
                "finish_reason": state.finish_reason}


# ------------------------------------------------------------ the service


class OpenAIServing:
    """Implements the OpenAI endpoints over an AsyncEngineClient."""

    def __init__(self, engine: Any, metrics: ServerMetrics):
        self.engine = engine
        self.metrics = metrics
        self._token_text = _TokenText(engine.tokenizer)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def models(self) -> ModelList:
        card = ModelCard(id=self.model_name, created=int(time.time()),
                         max_model_len=self.engine.max_model_len)
        return ModelList(data=[card])

    def model(self, model_id: str) -> ModelCard:
        self._check_model(model_id)
        return self.models().data[0]

    # -- entry points

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check_common(body)
        if body.top_logprobs is not None and not body.logprobs:
            raise errors.bad_request("top_logprobs requires logprobs to be true", "top_logprobs")
        prompt_ids = self._chat_prompt(body.messages)
        max_tokens, param = ((body.max_completion_tokens, "max_completion_tokens")
                             if body.max_completion_tokens is not None
                             else (body.max_tokens, "max_tokens"))
        limit = self._max_tokens(max_tokens, len(prompt_ids), "messages", param)
        k = (body.top_logprobs or 0) if body.logprobs else None
        params = self._sampling_params(body, limit, k)
        base = _Base(id=f"chatcmpl-{uuid.uuid4().hex}", model=self.model_name)
        jobs = self._jobs(base.id, [(prompt_ids, "")], [limit], params, body.n)
        renderer = _ChatRenderer(self._token_text, body.logprobs)
        return await self._respond(request, body, base, jobs, renderer, len(prompt_ids))

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        self._check_common(body)
        if body.echo and body.logprobs is not None:
            raise errors.bad_request("echo together with logprobs is not supported", "echo")
        prompts = self._completion_prompts(body.prompt)
        # Every prompt must fit; without max_tokens each fills its own context.
        limits = [self._max_tokens(body.max_tokens, len(ids), "prompt", "max_tokens")
                  for ids, _ in prompts]
        params = self._sampling_params(body, min(limits), body.logprobs)
        base = _Base(id=f"cmpl-{uuid.uuid4().hex}", model=self.model_name)
        jobs = self._jobs(base.id, prompts, limits, params, body.n)
        renderer = _CompletionRenderer(self._token_text, body.logprobs, body.echo)
        prompt_tokens = sum(len(ids) for ids, _ in prompts)
        return await self._respond(request, body, base, jobs, renderer, prompt_tokens)

    # -- validation and preparation

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise errors.model_not_found(model)

    def _check_common(self, body: _GenerationRequest) -> None:
        self._check_model(body.model)
        if body.stream_options is not None and not body.stream:
            raise errors.bad_request("stream_options is only allowed when stream is true",
                                     "stream_options")
        if not self.engine.is_healthy:
            raise errors.engine_dead()

    def _chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        turns = [_template_turn(m) for m in messages]
        try:
            text = self.engine.tokenizer.apply_chat_template(turns, add_generation_prompt=True)
        except ValueError as exc:
            raise errors.bad_request(f"Cannot apply the chat template: {exc}", "messages")
        return self.engine.tokenizer.encode(text, add_special_tokens=False)

    def _completion_prompts(self, prompt: Any) -> list[tuple[list[int], str]]:
        """Normalise the four prompt forms to (token ids, text) pairs."""
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
            return tokenizer.encode(prompt, add_special_tokens=False), prompt
        vocab = _vocab_size(tokenizer)
        if vocab is not None and any(not 0 <= t < vocab for t in prompt):
            raise errors.bad_request(f"prompt token ids must be in [0, {vocab})", "prompt")
        return list(prompt), tokenizer.decode(prompt)

    def _max_tokens(self, requested: int | None, prompt_len: int, prompt_param: str,
                    param: str) -> int:
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

    def _sampling_params(self, body: _GenerationRequest, max_tokens: int,
                         logprobs: int | None) -> SamplingParams:
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or ())
        if any(not s for s in stop):
            raise errors.bad_request("stop strings must not be empty", "stop")
        kwargs: dict[str, Any] = {
            "max_tokens": max_tokens, "stop": tuple(stop), "logprobs": logprobs,
            "stop_token_ids": tuple(body.stop_token_ids or ()), "ignore_eos": body.ignore_eos,
            "seed": body.seed, "speculative": body.speculative,
        }
        for name in ("temperature", "top_p", "top_k", "min_p", "presence_penalty",
                     "frequency_penalty", "repetition_penalty"):
            value = getattr(body, name)
            if value is not None:  # None keeps SamplingParams' (OpenAI's) default
                kwargs[name] = value
        try:
            return SamplingParams(**kwargs)
        except InvalidSamplingParams as exc:
            raise errors.bad_request(str(exc), exc.param)

    @staticmethod
    def _jobs(base_id: str, prompts: list[tuple[list[int], str]], limits: list[int],
              params: SamplingParams, n: int) -> list[_Job]:
        """One job per (prompt, choice); choice i of a prompt gets seed + i."""
        jobs = []
        for p, ((ids, text), limit) in enumerate(zip(prompts, limits)):
            for i in range(n):
                index = p * n + i
                seed = None if params.seed is None else params.seed + i
                job_params = dataclasses.replace(params, max_tokens=limit, seed=seed)
                jobs.append(_Job(index, f"{base_id}-{index}", ids, job_params, text))
        return jobs

    # -- running and framing

    async def _respond(self, request: Request, body: _GenerationRequest, base: _Base,
                       jobs: list[_Job], renderer: Any, prompt_tokens: int) -> Response:
        fanout = _Fanout(self.engine, jobs, self.metrics)
        try:
            if body.stream:
                await run_until_disconnect(request, fanout.prime())
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                events = self._events(fanout, base, jobs, renderer, prompt_tokens, include_usage)
                return SSEResponse(events, on_close=fanout.close)
            result = await run_until_disconnect(
                request, self._collect(fanout, base, jobs, renderer, prompt_tokens))
        except ClientDisconnected:
            await fanout.close()
            return Response(status_code=499)  # nobody is listening; nginx's convention
        except BaseException as exc:
            await fanout.close()
            if isinstance(exc, Exception):
                raise _map_engine_error(exc) from exc
            raise
        await fanout.close()
        return JSONResponse(result)

    async def _collect(self, fanout: _Fanout, base: _Base, jobs: list[_Job], renderer: Any,
                       prompt_tokens: int) -> dict[str, Any]:
        await fanout.prime()
        states = [_Choice() for _ in jobs]
        async for index, out in fanout.outputs():
            _apply(states[index], out, renderer)
        choices = [renderer.choice(job, states[job.index]) for job in jobs]
        return {"id": base.id, "object": renderer.object, "created": base.created,
                "model": base.model, "choices": choices, "usage": _usage(states, prompt_tokens)}

    async def _events(self, fanout: _Fanout, base: _Base, jobs: list[_Job], renderer: Any,
                      prompt_tokens: int, include_usage: bool) -> AsyncIterator[str]:
        head = {"id": base.id, "object": renderer.chunk_object, "created": base.created,
                "model": base.model}
        extra = {"usage": None} if include_usage else {}

        def chunk(choice: dict[str, Any]) -> str:
            return sse({**head, "choices": [choice], **extra})

        states = [_Choice() for _ in jobs]
        try:
            for job in jobs:
                opening = renderer.opening(job.index, job)
                if opening is not None:
                    yield chunk(opening)
            async for index, out in fanout.outputs():
                for choice in _stream_choices(states[index], index, out, renderer):
                    yield chunk(choice)
            if include_usage:
                yield sse({**head, "choices": [], "usage": _usage(states, prompt_tokens)})
            yield sse("[DONE]")
        except Exception as exc:  # headers are out: report in-band, then stop
            yield sse(_map_engine_error(exc).body())


def _apply(state: _Choice, out: RequestOutput, renderer: Any) -> tuple[str, list]:
    """Fold one output increment into a choice; return its text and logprob entries."""
    entries = renderer.logprob_entries(out, state)
    state.text += out.new_text
    state.logprobs.extend(entries)
    state.last = out
    if out.finished:
        state.finish_reason = out.finish_reason
    return out.new_text, entries


def _stream_choices(state: _Choice, index: int, out: RequestOutput,
                    renderer: Any) -> list[dict[str, Any]]:
    text, entries = _apply(state, out, renderer)
    choices = []
    delta = renderer.delta(index, text, entries)
    if delta is not None:
        choices.append(delta)
    if out.finished:
        choices.append(renderer.closing(index, out.finish_reason))
    return choices


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


def _vocab_size(tokenizer: Any) -> int | None:
    try:
        return len(tokenizer)
    except TypeError:
        return getattr(tokenizer, "vocab_size", None)
