"""End to end through HTTP in bfloat16: sixteen concurrent greedy streams,
with and without speculation, equal their solo runs token for token (the
batch-invariant kernels make a token's logits independent of the batch)."""
from __future__ import annotations

import asyncio

import openai
import pytest

from engine.client import AsyncEngineClient
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from scheduler.load import StepCostModel
from tests.e2e.test_concurrency import TOPICS, one_stream
from tests.server.helpers import live_server
from tests.tiny_model import make_tiny_model_dir


def make_client(model_dir, method: str, policy: str) -> AsyncEngineClient:
    config = EngineConfig(
        model=model_dir, served_model_name="tiny", dtype="bfloat16", machine_counters=False,
        cache=CacheConfig(block_size=8, num_blocks=400),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=96, max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, self_draft_layers=1,
                                      policy=policy))
    engine = LLMEngine(config, step_cost=StepCostModel.linear(0.01, 0.004))
    return AsyncEngineClient(engine, "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-e2e-bf16"), hidden_size=128, num_heads=4,
                               num_kv_heads=2, seed=9)


def streams(url: str, concurrently: bool) -> list[str]:
    """Every topic's greedy stream: one after another, or all sixteen at once."""
    async def scenario():
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)
        if concurrently:
            return list(await asyncio.gather(*(one_stream(client, t) for t in TOPICS)))
        return [await one_stream(client, t) for t in TOPICS]
    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def solo_plain(model_dir):
    """Speculation off, one stream at a time: the reference."""
    with live_server(make_client(model_dir, "none", "off")) as srv:
        return streams(srv.url, concurrently=False)


@pytest.mark.parametrize("method,policy", [("none", "off"), ("ngram", "adaptive"), ("ngram", "static"),
                                           ("self-draft", "adaptive")])
def test_16_concurrent_bf16_streams_equal_plain_solo_runs(model_dir, solo_plain, method, policy):
    with live_server(make_client(model_dir, method, policy)) as srv:
        solo, together = streams(srv.url, concurrently=False), streams(srv.url, concurrently=True)
    assert all(solo_plain)
    assert solo == solo_plain
    assert together == solo_plain
