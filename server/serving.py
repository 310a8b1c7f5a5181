"""The OpenAI endpoints, composed from the server's parts.

A request is validated into prompt ids and sampling parameters
(validation.py), fanned out as one engine request per choice (fanout.py),
rendered into the protocol's response or chunk models (rendering.py), and
sent as JSON or as Server-Sent Events that stop, and abort the engine
requests, as soon as the client goes away (sse.py).
"""
from __future__ import annotations

import time
import uuid
from typing import AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from engine.interface import EngineClient
from engine.outputs import QueueFullError
from engine.structured.grammar import UnsupportedSchema
from server import errors
from server.fanout import Fanout, Job, make_jobs
from server.limits import RequestLimits
from server.metrics import ServerMetrics
from server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerationRequest,
    ModelCard,
    ModelList,
    Usage,
)
from server.rendering import (
    ChatRenderer,
    ChoiceState,
    CompletionRenderer,
    Renderer,
    ResponseHead,
    TokenText,
    usage,
)
from server.spec_trace import trace_extension
from server.sse import ClientDisconnected, SSEResponse, run_until_disconnect, sse
from server.validation import RequestValidator, ValidatedRequest


class OpenAIServing:
    """Implements the OpenAI endpoints over an EngineClient."""

    def __init__(self, engine: EngineClient, metrics: ServerMetrics,
                 limits: RequestLimits | None = None):
        self.engine = engine
        self.metrics = metrics
        self.validator = RequestValidator(engine, limits)
        self._token_text = TokenText(engine.tokenizer)

    @property
    def model_name(self) -> str:
        return self.engine.model_name

    def models(self) -> ModelList:
        # A dead engine serves nothing: /v1/models agrees with /health.
        if not self.engine.is_healthy:
            raise errors.engine_dead()
        card = ModelCard(id=self.model_name, created=int(time.time()),
                         max_model_len=self.engine.max_model_len)
        return ModelList(data=[card])

    def model(self, model_id: str) -> ModelCard:
        self.validator.check_model(model_id)
        return self.models().data[0]

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        self._check_ready(body)
        validated = self.validator.chat(body)
        await self._prepare_grammar(validated)
        renderer = ChatRenderer(self._token_text, body.logprobs)
        return await self._respond(request, body, "chatcmpl", validated, renderer)

    async def completion(self, body: CompletionRequest, request: Request) -> Response:
        self._check_ready(body)
        validated = self.validator.completion(body)
        await self._prepare_grammar(validated)
        renderer = CompletionRenderer(self._token_text, body.logprobs, body.echo)
        return await self._respond(request, body, "cmpl", validated, renderer)

    async def _prepare_grammar(self, validated: ValidatedRequest) -> None:
        """Compile the response_format's grammar off the event loop: a schema
        we cannot enforce is a 400 naming what, before anything is queued."""
        spec = validated.params.structured
        if spec is None:
            return
        try:
            await self.engine.prepare_grammar(spec)
        except UnsupportedSchema as exc:
            raise errors.bad_request(str(exc), "response_format") from exc

    def _check_ready(self, body: GenerationRequest) -> None:
        self.validator.check_common(body)
        if not self.engine.is_healthy:
            raise errors.engine_dead()

    async def _respond(self, request: Request, body: GenerationRequest, id_prefix: str,
                       validated: ValidatedRequest, renderer: Renderer) -> Response:
        head = ResponseHead(id=f"{id_prefix}-{uuid.uuid4().hex}", model=self.model_name)
        self._check_capacity(len(validated.prompts) * validated.n)
        jobs = make_jobs(head.id, validated.prompts, validated.params, validated.n)
        fanout = Fanout(self.engine, jobs, self.metrics)
        prompt_tokens = validated.prompt_tokens
        try:
            if body.stream:
                await run_until_disconnect(request, fanout.prime())
                include_usage = bool(body.stream_options and body.stream_options.include_usage)
                tracing = bool(body.specserve and body.specserve.trace)
                events = self._events(fanout, head, jobs, renderer, prompt_tokens, include_usage,
                                      tracing)
                return SSEResponse(events, on_close=fanout.close)
            result = await run_until_disconnect(
                request, self._collect(fanout, head, jobs, renderer, prompt_tokens))
        except ClientDisconnected:
            await fanout.close()
            return Response(status_code=499)  # nobody is listening; nginx's convention
        except BaseException as exc:
            await fanout.close()
            if isinstance(exc, Exception):
                raise errors.from_engine_error(exc) from exc
            raise
        await fanout.close()
        return JSONResponse(result)

    def _check_capacity(self, num_choices: int) -> None:
        """All choices are admitted or none, before any job or task exists."""
        try:
            self.engine.check_capacity(num_choices)
        except QueueFullError as exc:
            raise errors.from_engine_error(exc) from exc

    @staticmethod
    async def _collect(fanout: Fanout, head: ResponseHead, jobs: list[Job], renderer: Renderer,
                       prompt_tokens: int) -> dict:
        await fanout.prime()
        states = _states(jobs)
        async for index, out in fanout.outputs():
            renderer.fold(states[index], out)
        return renderer.response(head, states, prompt_tokens).model_dump()

    async def _events(self, fanout: Fanout, head: ResponseHead, jobs: list[Job],
                      renderer: Renderer, prompt_tokens: int, include_usage: bool,
                      tracing: bool = False) -> AsyncIterator[str]:
        # OpenAI sends `"usage": null` in every chunk only when include_usage asked for
        # the final usage chunk; otherwise chunks have no usage key at all.
        leave_out = None if include_usage else {"usage"}

        def event(choices: list, usage_: Usage | None = None, trace: dict | None = None) -> str:
            chunk = renderer.chunk(head, choices, usage_).model_dump(exclude=leave_out)
            if trace is not None:
                chunk["specserve"] = trace  # the opt-in extension (server/spec_trace.py)
            return sse(chunk)

        states = _states(jobs)
        try:
            for state in states:
                opening = renderer.opening(state)
                if opening is not None:
                    yield event([opening])
            async for index, out in fanout.outputs():
                choices = renderer.increment(states[index], out)
                trace = trace_extension(index, out, self.engine.stats()) if tracing else None
                if trace is not None and not choices:
                    yield event([], trace=trace)  # tokens that added no visible text yet
                for number, choice in enumerate(choices):
                    yield event([choice], trace=trace if number == 0 else None)
            if include_usage:
                yield event([], usage(states, prompt_tokens))
            yield sse("[DONE]")
        except Exception as exc:  # headers are out: report in-band, then stop
            yield sse(errors.from_engine_error(exc).body())


def _states(jobs: list[Job]) -> list[ChoiceState]:
    """One state per choice, in index order (job i feeds choice i)."""
    return [ChoiceState(job.index, job.prompt_text) for job in jobs]
