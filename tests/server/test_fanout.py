"""Fan-out: one engine request per (prompt, choice), merged, aborted on close."""
from __future__ import annotations

import asyncio

import pytest

from engine.outputs import QueueFullError
from scheduler.request import SamplingParams
from server.fanout import Fanout, choice_seed, make_jobs
from server.metrics import ServerMetrics
from server.protocol import INT64_MAX, INT64_MIN
from server.validation import ValidatedPrompt
from tests.server.fake_engine import FakeEngineClient

PROMPTS = [ValidatedPrompt([10, 11, 12], "abc", 3), ValidatedPrompt([20, 21], "xy", 5)]


def _fanout(engine, jobs) -> Fanout:
    return Fanout(engine, jobs, ServerMetrics(engine))


def test_make_jobs_indexes_ids_seeds_and_budgets():
    jobs = make_jobs("cmpl-x", PROMPTS, SamplingParams(max_tokens=3, seed=100), n=2)
    assert [(j.index, j.request_id, j.prompt_ids, j.prompt_text) for j in jobs] == [
        (0, "cmpl-x-0", [10, 11, 12], "abc"), (1, "cmpl-x-1", [10, 11, 12], "abc"),
        (2, "cmpl-x-2", [20, 21], "xy"), (3, "cmpl-x-3", [20, 21], "xy")]
    assert [j.params.seed for j in jobs] == [100, 101, 100, 101]
    assert [j.params.max_tokens for j in jobs] == [3, 3, 5, 5]


def test_make_jobs_without_seed_stays_unseeded():
    jobs = make_jobs("c", PROMPTS[:1], SamplingParams(max_tokens=3), n=3)
    assert [j.params.seed for j in jobs] == [None, None, None]


def test_outputs_merge_every_choice_to_its_end():
    engine = FakeEngineClient()

    async def run():
        fanout = _fanout(engine, make_jobs("c", PROMPTS, SamplingParams(max_tokens=3), n=2))
        await fanout.prime()
        seen = [(index, out) async for index, out in fanout.outputs()]
        await fanout.close()
        return seen

    seen = asyncio.run(run())
    finished = {index: out for index, out in seen if out.finished}
    assert sorted(finished) == [0, 1, 2, 3]
    assert all(out.request_id == f"c-{i}" for i, out in seen)
    assert [finished[i].num_output_tokens for i in range(4)] == [3, 3, 5, 5]
    assert engine.aborted == [] and not engine.running  # finished requests are not aborted


def test_close_aborts_live_requests():
    engine = FakeEngineClient(step_delay=0.05)

    async def run():
        jobs = make_jobs("c", PROMPTS, SamplingParams(max_tokens=100, ignore_eos=True), n=2)
        fanout = _fanout(engine, jobs)
        await fanout.prime()
        assert len(engine.running) == 4
        await fanout.close()

    asyncio.run(run())
    assert sorted(engine.aborted) == ["c-0", "c-1", "c-2", "c-3"]
    assert not engine.running


class _NeverStarts(FakeEngineClient):
    """An engine whose streams hang before their first output and ignore
    cancellation's cleanup: only an explicit abort reaches it."""

    def __init__(self):
        super().__init__()
        self.abort_calls: list[str] = []

    async def generate(self, request_id, prompt_token_ids, params):
        await asyncio.Event().wait()
        yield  # pragma: no cover - makes this an async generator

    async def abort(self, request_id: str) -> None:
        self.abort_calls.append(request_id)


def test_close_aborts_requests_that_never_produced_anything():
    engine = _NeverStarts()

    async def run():
        fanout = _fanout(engine, make_jobs("c", PROMPTS[:1], SamplingParams(max_tokens=3), n=2))
        await asyncio.sleep(0.01)
        await fanout.close()

    asyncio.run(run())
    assert sorted(engine.abort_calls) == ["c-0", "c-1"]


def test_prime_raises_the_engine_error_before_any_output():
    engine = FakeEngineClient(queue_full=True)

    async def run():
        fanout = _fanout(engine, make_jobs("c", PROMPTS, SamplingParams(max_tokens=3), n=1))
        try:
            await fanout.prime()
        finally:
            await fanout.close()

    with pytest.raises(QueueFullError):
        asyncio.run(run())


@pytest.mark.parametrize("seed", [INT64_MAX, INT64_MAX - 1, INT64_MIN, -1])
def test_choice_seeds_wrap_within_int64(seed):
    """seed + choice must stay a valid int64 seed for whatever keys noise on it."""
    jobs = make_jobs("cmpl-x", PROMPTS[:1], SamplingParams(seed=seed), 4)
    seeds = [job.params.seed for job in jobs]
    assert all(INT64_MIN <= s <= INT64_MAX for s in seeds)
    assert len(set(seeds)) == 4 and seeds[0] == seed
    assert choice_seed(INT64_MAX, 1) == INT64_MIN
