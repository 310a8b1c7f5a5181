"""Server test fixtures: a real uvicorn server in a thread, per test module.

`engine_client` is the one switch between the fake engine and the real one.
By default it is the real engine; a module whose tests also assert exact,
predictable values (`if is_fake:`) runs them against both engines by
overriding it with `both_engines` (`engine_client = both_engines`), so that
those branches really run. Tests that need a particular failure (full
queue, dead engine) build their own FakeEngineClient and serve it with
`helpers.live_server`.
"""
from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import LiveServer, live_server


def real_engine_client(tmp_path_factory) -> Any:
    """The REAL engine (tiny random model, n-gram speculation with the
    adaptive policy)."""
    from engine.client import AsyncEngineClient
    from engine.config import CacheConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
    from engine.engine import LLMEngine
    from scheduler.load import StepCostModel
    from tests.tiny_model import make_tiny_model_dir

    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"), seed=5)
    config = EngineConfig(
        model=model_dir, served_model_name="tiny-test-model", machine_counters=False,
        cache=CacheConfig(block_size=16, num_blocks=512),
        scheduler=SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, max_model_len=512),
        speculative=SpeculativeConfig(method="ngram", num_speculative_tokens=4, policy="adaptive"))
    return AsyncEngineClient(LLMEngine(config, step_cost=StepCostModel.flat()), config.served_model_name)


@pytest.fixture(scope="module")
def engine_client(tmp_path_factory) -> Any:
    """The real engine behind the shared server of a test module."""
    return real_engine_client(tmp_path_factory)


@pytest.fixture(scope="module", params=["real", "fake"])
def both_engines(request, tmp_path_factory) -> Any:
    """The real engine, then the echo-like fake (whose outputs are exact)."""
    if request.param == "fake":
        return FakeEngineClient(model_name="tiny-test-model")
    return real_engine_client(tmp_path_factory)


@pytest.fixture(scope="module")
def is_fake(engine_client: Any) -> bool:
    """True when exact outputs are predictable (the echo-like fake)."""
    return isinstance(engine_client, FakeEngineClient)


@pytest.fixture(scope="module")
def server(engine_client: Any) -> Iterator[LiveServer]:
    with live_server(engine_client) as srv:
        yield srv


@pytest.fixture(scope="module")
def model_name(engine_client: Any) -> str:
    return engine_client.model_name


@pytest.fixture()
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture()
def openai_client(server: LiveServer) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)
