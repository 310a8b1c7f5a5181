"""Admission under a burst (issue 11, defect 5): requests are counted on live
state, so a burst fills the free batch slots and the waiting queue instead
of being judged against a snapshot taken before it arrived."""
from __future__ import annotations

import asyncio

import pytest

from engine.client import AsyncEngineClient
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.outputs import QueueFullError
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

MAX_NUM_SEQS, MAX_WAITING = 8, 3


@pytest.fixture(scope="module")
def client(tmp_path_factory) -> AsyncEngineClient:
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-admission"), seed=3)
    config = EngineConfig(
        model=model_dir, cache=CacheConfig(block_size=8, num_blocks=200),
        scheduler=SchedulerConfig(max_num_seqs=MAX_NUM_SEQS, max_num_batched_tokens=128,
                                  max_model_len=128, max_waiting=MAX_WAITING),
        speculative=SpeculativeConfig(method="none"))
    return AsyncEngineClient(LLMEngine(config, step_cost=StepCostModel.flat()), "tiny")


async def _burst(client: AsyncEngineClient, size: int) -> list[str]:
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)

    async def one(i: int) -> str:
        try:
            async for _ in client.generate(f"burst-{size}-{i}", [5, 6, 7, 8], params):
                pass
            return "served"
        except QueueFullError:
            return "429"

    await client.start()
    try:
        return await asyncio.gather(*(one(i) for i in range(size)))
    finally:
        await client.shutdown()


def test_a_burst_fills_the_batch_and_the_queue(client):
    results = asyncio.run(_burst(client, 3 * (MAX_NUM_SEQS + MAX_WAITING)))
    # All arrive before the engine runs a step: the batch takes MAX_NUM_SEQS,
    # the queue MAX_WAITING, the rest is refused.
    assert results.count("served") == MAX_NUM_SEQS + MAX_WAITING
    assert client.engine.scheduler.kv_usage == 0.0


def test_capacity_is_checked_for_a_whole_request(client):
    client.check_capacity(MAX_NUM_SEQS + MAX_WAITING)
    with pytest.raises(QueueFullError):
        client.check_capacity(MAX_NUM_SEQS + MAX_WAITING + 1)
