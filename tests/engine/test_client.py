"""engine/client.py: the engine in a background thread behind async
streams; leaving a stream aborts its request, admission is bounded, and a
crashed loop fails every request in flight."""
from __future__ import annotations

import asyncio

import pytest

from engine.client import AsyncEngineClient
from engine.config import CacheConfig, EngineConfig, SchedulerConfig
from engine.engine import LLMEngine
from engine.outputs import EngineDeadError, QueueFullError
from scheduler.load import StepCostModel
from scheduler.request import SamplingParams
from tests.tiny_model import make_tiny_model_dir

PARAMS = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    config = EngineConfig(model=make_tiny_model_dir(tmp_path_factory.mktemp("tiny")), dtype="float32",
                          cache=CacheConfig(block_size=8, num_blocks=64),
                          scheduler=SchedulerConfig(max_num_seqs=2, max_model_len=128, max_waiting=1))
    return LLMEngine(config, step_cost=StepCostModel.flat())


async def collect(client, request_id, prompt):
    return [output async for output in client.generate(request_id, prompt, PARAMS)]


def test_streams_what_the_engine_generates_and_names_the_model(engine):
    expected = engine.generate([[5, 6, 7]], PARAMS)[0]

    async def run():
        client = AsyncEngineClient(engine)
        await client.start()
        try:
            outputs = await collect(client, "a", [5, 6, 7])
        finally:
            await client.shutdown()
        return client, outputs

    client, outputs = asyncio.run(run())
    assert [t for out in outputs for t in out.new_token_ids] == expected
    assert outputs[-1].finished and outputs[-1].finish_reason == "length"
    assert client.model_name.startswith("tiny") and not client.is_healthy  # shut down


def test_leaving_a_stream_early_aborts_its_request(engine):
    async def run():
        client = AsyncEngineClient(engine)
        await client.start()
        try:
            stream = client.generate("early", [5, 6, 7], SamplingParams(temperature=0.0, max_tokens=100,
                                                                          ignore_eos=True))
            await stream.__anext__()
            await stream.aclose()
            for _ in range(200):
                if not engine.has_unfinished():
                    break
                await asyncio.sleep(0.01)
        finally:
            await client.shutdown()

    asyncio.run(run())
    assert not engine.has_unfinished()


def test_capacity_is_the_batch_plus_the_waiting_queue(engine):
    client = AsyncEngineClient(engine)
    assert client.capacity == 3
    client.check_capacity(3)
    with pytest.raises(QueueFullError):
        client.check_capacity(4)


def test_a_client_not_started_or_crashed_refuses_requests(engine):
    client = AsyncEngineClient(engine)
    with pytest.raises(EngineDeadError, match="not running"):
        asyncio.run(collect(client, "x", [5]))

    class Broken:
        def has_unfinished(self):
            raise RuntimeError("the loop broke")

    async def run():
        crashed = AsyncEngineClient(engine)
        crashed.engine = Broken()
        await crashed.start()
        for _ in range(200):
            if not crashed.is_healthy:
                break
            await asyncio.sleep(0.01)
        with pytest.raises(EngineDeadError, match="the loop broke"):
            await collect(crashed, "y", [5])
        await crashed.shutdown()

    asyncio.run(run())
