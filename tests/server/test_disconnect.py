"""A client that goes away gets its engine requests aborted promptly."""
from __future__ import annotations

import time

import httpx
import pytest

from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server, wait_until

CHAT = "/v1/chat/completions"


def _idle(engine) -> bool:
    stats = engine.stats()
    return stats.num_running == 0 and stats.num_waiting == 0


def _long_request(engine, **kw):
    # Long enough never to finish by itself during the test.
    body = {"messages": [{"role": "user", "content": "go on"}],
            "max_tokens": engine.max_model_len // 2, "temperature": 0, "ignore_eos": True}
    body.update(kw)
    return body


def test_stream_disconnect_aborts(server, engine_client, is_fake):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", CHAT, json=_long_request(engine_client, stream=True)) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            next(line for line in lines if '"content"' in line and '"role"' not in line)
            assert wait_until(lambda: not _idle(engine_client), timeout=2)
            closed_at = time.monotonic()
        # leaving the block closes the connection mid-stream
    assert wait_until(lambda: _idle(engine_client), timeout=5)
    if is_fake:
        assert engine_client.aborted, "the engine request was not aborted"
        assert time.monotonic() - closed_at < 2


def test_stream_disconnect_aborts_every_choice(server, engine_client, is_fake):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        with http.stream("POST", CHAT, json=_long_request(engine_client, stream=True, n=3)) as r:
            next(line for line in r.iter_lines() if '"content"' in line and '"role"' not in line)
    assert wait_until(lambda: _idle(engine_client), timeout=5)
    if is_fake:
        assert len(engine_client.aborted) >= 3


def test_non_streaming_disconnect_aborts(server, engine_client, is_fake):
    before = len(engine_client.aborted) if is_fake else 0
    with httpx.Client(base_url=server.url, timeout=0.3) as http:
        with pytest.raises(httpx.TimeoutException):
            http.post(CHAT, json=_long_request(engine_client))
    assert wait_until(lambda: _idle(engine_client), timeout=5)
    if is_fake:
        assert len(engine_client.aborted) == before + 1


@pytest.mark.parametrize("stream", [False, True])
def test_disconnect_before_first_token_aborts(stream):
    # The engine takes 10 s per step: the client leaves while the request
    # is still queued, before any header was sent.
    engine = FakeEngineClient(step_delay=10)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url, timeout=0.3) as http:
        with pytest.raises(httpx.TimeoutException):
            http.post(CHAT, json={"messages": [{"role": "user", "content": "x"}],
                                  "stream": stream})
        assert wait_until(lambda: engine.aborted, timeout=3)
        assert not engine.running


def test_server_survives_disconnects(server, engine_client):
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post(CHAT, json={"messages": [{"role": "user", "content": "hi"}],
                                  "max_tokens": 3})
        assert r.status_code == 200
        assert http.get("/health").status_code == 200


def test_stream_disconnect_noticed_between_steps():
    # Steps take 1 s: the abort must come from watching the connection, not
    # from the next failed send one step later.
    engine = FakeEngineClient(step_delay=1.0, spec_tokens=0)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        with http.stream("POST", CHAT, json={"messages": [{"role": "user", "content": "x"}],
                                             "stream": True, "max_tokens": 50}) as r:
            next(line for line in r.iter_lines() if '"content"' in line and '"role"' not in line)
            closed_at = time.monotonic()
        assert wait_until(lambda: engine.aborted, timeout=3)
        assert time.monotonic() - closed_at < 0.5
