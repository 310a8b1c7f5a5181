"""Helpers for server tests: a live uvicorn server, SSE parsing, polling."""
from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from typing import Any, Callable, Iterable, Iterator

import uvicorn

from server.app import create_app

ERROR_KEYS = {"message", "type", "param", "code"}


class LiveServer:
    """A uvicorn server on a free 127.0.0.1 port, running in a daemon thread."""

    def __init__(self, app: Any):
        self.app = app
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)

    def start(self) -> "LiveServer":
        self._thread.start()
        deadline = time.monotonic() + 60
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
    """Serve `create_app(engine, **app_kwargs)` for the duration of a block."""
    server = LiveServer(create_app(engine, **app_kwargs)).start()
    try:
        yield server
    finally:
        server.stop()


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0,
               interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def parse_sse(lines: Iterable[str]) -> list[Any]:
    """`data:` payloads of an event stream: dicts, and the string "[DONE]".

    Strict on framing: every non-empty line must be a `data: ` line.
    """
    events: list[Any] = []
    for line in lines:
        if not line:
            continue
        assert line.startswith("data: "), f"not an SSE data line: {line!r}"
        payload = line[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def assert_error(response: Any, status: int, param: Any = "any", code: Any = "any") -> dict:
    """Check an OpenAI error response: status, exact body shape, optional param/code."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ERROR_KEYS, err
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert "Traceback" not in err["message"]
    if param != "any":
        assert err["param"] == param, err
    if code != "any":
        assert err["code"] == code, err
    return err
