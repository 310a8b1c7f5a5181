"""Server test fixtures: a real uvicorn server in a thread, per test module.

`engine_client` is the one switch between the fake engine and the real one:
tests that only check protocol shapes use it and run against either. Tests
that need a particular failure (full queue, dead engine) build their own
FakeEngineClient and serve it with `live_server`.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any, Iterator

import httpx
import pytest
import uvicorn

from server.app import create_app
from tests.server.fake_engine import FakeEngineClient


class LiveServer:
    """A uvicorn server on a free 127.0.0.1 port, running in a daemon thread."""

    def __init__(self, app: Any):
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def live_server(engine: Any, **app_kwargs: Any) -> Iterator[LiveServer]:
    server = LiveServer(create_app(engine, **app_kwargs)).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(scope="module")
def engine_client() -> Any:
    """The engine behind the shared server; swap for the real client here."""
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
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


@pytest.fixture()
def openai_client(server: LiveServer) -> Any:
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=30)
