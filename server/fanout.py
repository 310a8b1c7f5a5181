"""Fan-out: one engine request per (prompt, choice), merged as outputs arrive.

OpenAI's `n` and batched completion prompts become independent engine
requests (`make_jobs`); `Fanout` runs them concurrently, hands their outputs
to one consumer in arrival order, and aborts whatever is still live when it
is closed (the client left, or the response failed).
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, AsyncIterator, Sequence

from engine.interface import EngineClient
from engine.outputs import RequestOutput
from scheduler.request import SamplingParams
from server.metrics import ServerMetrics
from server.validation import ValidatedPrompt

logger = logging.getLogger(__name__)

_END = object()  # a pump's marker: its engine request yields nothing more


@dataclass
class Job:
    """One engine request: the choice it feeds and what to generate."""

    index: int
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    prompt_text: str = ""


def choice_seed(seed: int, choice: int) -> int:
    """seed + choice, wrapped into the signed 64-bit range a seed is in."""
    return (seed + choice + 2**63) % 2**64 - 2**63


def make_jobs(base_id: str, prompts: Sequence[ValidatedPrompt], params: SamplingParams,
              n: int) -> list[Job]:
    """One job per (prompt, choice); choice i of a prompt gets seed + i
    (wrapped: the largest int64 seed's next choice gets the smallest).

    Choice indexes run prompt by prompt (prompt p, choice i -> p * n + i),
    as in OpenAI's batched completions.
    """
    jobs = []
    for p, prompt in enumerate(prompts):
        for i in range(n):
            index = p * n + i
            seed = None if params.seed is None else choice_seed(params.seed, i)
            job_params = dataclasses.replace(params, max_tokens=prompt.max_tokens, seed=seed)
            jobs.append(Job(index, f"{base_id}-{index}", prompt.token_ids, job_params,
                            prompt.text))
    return jobs


class Fanout:
    """Runs one engine request per job and merges their outputs as they come.

    Each request is pumped by its own task into one queue, so choices
    interleave in arrival order. `close()` cancels the pumps; cancelling an
    engine generator makes the engine abort the request, and requests still
    live are aborted explicitly as well, in case the generator was never
    started or ignores cancellation.
    """

    def __init__(self, engine: EngineClient, jobs: list[Job], metrics: ServerMetrics):
        self._engine = engine
        self._jobs = jobs
        self._metrics = metrics
        self._queue: asyncio.Queue = asyncio.Queue()
        self._primed: list[tuple[int, Any]] = []
        self._live = {job.request_id for job in jobs}
        self._tasks = [asyncio.ensure_future(self._pump(job)) for job in jobs]

    async def _pump(self, job: Job) -> None:
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
        """Stop every pump and abort the engine requests that are still live."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for request_id in list(self._live):
            try:
                await self._engine.abort(request_id)
            except Exception:  # already gone: nothing to free
                logger.debug("abort of %s failed", request_id, exc_info=True)
        self._live.clear()
