"""server/serving.py: a request is validated once, admitted whole or not
at all, fanned out to the engine and answered as JSON or a stream."""
from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error, parse_sse

CHAT = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "hello"}]}


def test_a_full_queue_admits_none_of_a_request_s_choices():
    engine = FakeEngineClient(model_name="m", queue_full=True)
    with TestClient(create_app(engine)) as http:
        assert_error(http.post("/v1/chat/completions", json={**CHAT, "n": 3}), 429)
    assert engine.attempted == []  # nothing was submitted


def test_n_choices_share_one_prompt_count_in_usage():
    engine = FakeEngineClient(model_name="m")
    with TestClient(create_app(engine)) as http:
        body = http.post("/v1/chat/completions", json={**CHAT, "n": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert len(engine.submitted) == 2 and engine.submitted[0][1] == engine.submitted[1][1]
    prompt_tokens = len(engine.submitted[0][1])
    assert body["usage"]["prompt_tokens"] == prompt_tokens
    assert body["usage"]["total_tokens"] == prompt_tokens + body["usage"]["completion_tokens"]


def test_a_stream_ends_with_usage_when_asked_and_done():
    with TestClient(create_app(FakeEngineClient(model_name="m"))) as http:
        response = http.post("/v1/chat/completions",
                             json={**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    events = parse_sse(response.text.splitlines())
    assert events[-1] == "[DONE]" and events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-2])


def test_a_dead_engine_refuses_before_any_work():
    engine = FakeEngineClient(model_name="m", dead=True)
    with TestClient(create_app(engine)) as http:
        assert_error(http.post("/v1/chat/completions", json=CHAT), 503)
    assert engine.attempted == []
