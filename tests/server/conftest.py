"""Server test fixtures: a real uvicorn server in a thread, per test module.

`engine_client` is the one switch between the fake engine and the real one:
tests that only check protocol shapes use it and run against either; exact
values are asserted only when `is_fake`. Tests that need a particular
failure (full queue, dead engine) build their own FakeEngineClient and serve
it with `helpers.live_server`.
"""
from __future__ import annotations

from typing import Any, Iterator

import httpx
import pytest

from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import LiveServer, live_server


@pytest.fixture(scope="module")
def engine_client() -> Any:
    """The engine behind the shared server of a test module (fresh per module)."""
    return FakeEngineClient()


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
