"""End to end through HTTP with the real engine: concurrent greedy streams
equal their solo runs, and a client that disconnects frees its KV blocks."""
from __future__ import annotations

import asyncio

import httpx
import numpy as np
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from engine.client import AsyncEngineClient
from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from engine.engine import LLMEngine
from engine.spec.datastore import SHARE_BINS, build_datastore, tokenizer_fingerprint
from scheduler.load import StepCostModel
from tests.server.helpers import live_server, wait_until
from tests.tiny_model import make_tiny_model_dir

TOPICS = ["caches", "trees", "rivers", "compilers", "tea", "maps", "clocks", "bees",
          "lamps", "boats", "codes", "stars", "roads", "bread", "wind", "glass"]


def make_client(model_dir, method: str, **speculative) -> AsyncEngineClient:
    config = EngineConfig(
        model=model_dir, served_model_name="tiny", machine_counters=False,
        cache=CacheConfig(block_size=8, num_blocks=400),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=96, max_model_len=512),
        speculative=SpeculativeConfig(method=method, num_speculative_tokens=4, self_draft_layers=1,
                                      **speculative))
    return AsyncEngineClient(LLMEngine(config, step_cost=StepCostModel.flat()), "tiny")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model_dir(tmp_path_factory.mktemp("tiny-e2e"), seed=9)


async def one_stream(client: openai.AsyncOpenAI, topic: str) -> str:
    stream = await client.chat.completions.create(
        model="tiny", stream=True, temperature=0, max_tokens=20,
        messages=[{"role": "user", "content": f"Tell me about {topic} and {topic}."}],
        extra_body={"ignore_eos": True})
    return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])


@pytest.mark.parametrize("method", ["none", "ngram", "self-draft"])
def test_16_concurrent_greedy_streams_equal_their_solo_runs(model_dir, method):
    with live_server(make_client(model_dir, method)) as srv:
        async def scenario():
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            solo = [await one_stream(client, t) for t in TOPICS]
            together = await asyncio.gather(*(one_stream(client, t) for t in TOPICS))
            return solo, together
        solo, together = asyncio.run(scenario())
    assert all(solo)
    assert together == solo


def test_token_trees_over_http_equal_plain_solo_runs(model_dir, tmp_path):
    """n-gram with a datastore and --ngram-alternatives: 16 streams at once
    (alternatives verified as forks beside other requests' rows) equal
    plain decoding's solo runs, and /metrics counts the alternatives."""
    plain = make_client(model_dir, "none")
    with live_server(plain) as srv:
        client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        solo = asyncio.run(_each_alone(client))
    tokenizer = plain.engine.tokenizer
    corpus = [tokenizer.encode(text) for text in solo] * 2 + [tokenizer.encode(f"{t} and tea") for t in TOPICS]
    path = str(tmp_path / "datastore.safetensors")
    datastore = build_datastore(corpus, max_n=3, min_count=1, tokenizer=tokenizer_fingerprint(
        tokenizer.backend.get_vocab()))
    datastore.survival = np.tile(np.linspace(0.05, 0.25, SHARE_BINS, dtype=np.float32), (3, 3, 1))
    datastore.save(path)
    trees = make_client(model_dir, "ngram", ngram_datastore=path, ngram_alternatives=True)
    with live_server(trees) as srv:
        async def together():
            client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
            return await asyncio.gather(*(one_stream(client, t) for t in TOPICS))
        assert asyncio.run(together()) == solo
        with httpx.Client(base_url=srv.url) as http:
            families = {f.name: f for f in text_string_to_metric_families(http.get("/metrics").text)}
    verified = families["specserve:spec_tree_alternatives"].samples[0].value
    assert verified > 0 and verified == trees.stats().num_alternatives
    assert trees.stats().num_alternative_wins > 0


async def _each_alone(client: openai.AsyncOpenAI) -> list[str]:
    return [await one_stream(client, t) for t in TOPICS]


def test_disconnect_mid_stream_frees_slot_and_blocks(model_dir):
    engine_client = make_client(model_dir, "ngram")
    blocks = engine_client.engine.scheduler.block_manager
    total_free = blocks.num_free_blocks
    with live_server(engine_client) as srv:
        body = {"model": "tiny", "stream": True, "max_tokens": 400, "ignore_eos": True,
                "messages": [{"role": "user", "content": "go on forever"}]}
        with httpx.Client(base_url=srv.url, timeout=30) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                lines = response.iter_lines()
                seen = [next(lines) for _ in range(6)]
                assert any(line.startswith("data: {") for line in seen)
                assert engine_client.stats().num_running == 1 or blocks.num_free_blocks < total_free
            # The connection is closed here, long before 400 tokens.
        assert wait_until(lambda: engine_client.stats().num_running == 0
                          and blocks.num_free_blocks == total_free, timeout=10)
        assert engine_client.stats().generation_tokens < 400
        blocks.check_integrity()
