"""Server-Sent Events (server/sse.py): framing, every chunk's fields, ordering,
usage and [DONE]; and a client that goes away gets its engine requests
aborted promptly."""
from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace

import httpx
import pytest

from server.protocol import ChatCompletionChunk, CompletionResponse
from server.sse import ClientDisconnected, SSEResponse, run_until_disconnect, sse
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import live_server, parse_sse, wait_until


@pytest.fixture(scope="module")
def engine_client(both_engines):
    """Both engines: exact values are asserted against the fake (`if is_fake:`),
    shapes against both."""
    return both_engines


MESSAGES = [{"role": "user", "content": "Tell me a story"}]


def _stream(http, path, body):
    # The openai client sends accept: application/json even when streaming;
    # the server must not branch on it.
    with http.stream("POST", path, json=body, headers={"accept": "application/json"}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert "content-length" not in r.headers
        raw = r.read().decode()
    assert raw.endswith("\n\n")
    return parse_sse(raw.split("\n"))


def _check_heads(chunks, obj, model_name):
    ids = {c["id"] for c in chunks}
    created = {c["created"] for c in chunks}
    assert len(ids) == 1 and len(created) == 1
    for c in chunks:
        assert c["object"] == obj and c["model"] == model_name
        assert isinstance(c["created"], int) and isinstance(c["choices"], list)


def _per_choice(chunks):
    by_index: dict[int, list] = {}
    for c in chunks:
        for choice in c["choices"]:
            by_index.setdefault(choice["index"], []).append(choice)
    return by_index


def test_chat_stream_chunks(http, model_name):
    events = _stream(http, "/v1/chat/completions",
                     {"model": model_name, "messages": MESSAGES, "max_tokens": 6, "n": 2,
                      "stream": True})
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = events[:-1]
    _check_heads(chunks, "chat.completion.chunk", model_name)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
        assert "usage" not in c  # only with stream_options.include_usage
        assert len(c["choices"]) == 1
        assert set(c["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    by_index = _per_choice(chunks)
    assert sorted(by_index) == [0, 1]
    for choices in by_index.values():
        assert choices[0]["delta"] == {"role": "assistant", "content": ""}
        assert all("role" not in ch["delta"] for ch in choices[1:])
        assert all(ch["finish_reason"] is None for ch in choices[:-1])
        assert choices[-1]["finish_reason"] in ("stop", "length")
        text = "".join(ch["delta"].get("content", "") for ch in choices)
        assert text


def test_chat_stream_include_usage(http, model_name):
    events = _stream(http, "/v1/chat/completions",
                     {"messages": MESSAGES, "max_tokens": 5, "stream": True,
                      "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    *chunks, usage_chunk = events[:-1]
    _check_heads(chunks + [usage_chunk], "chat.completion.chunk", model_name)
    assert all(c["usage"] is None for c in chunks)  # OpenAI sends explicit nulls
    assert usage_chunk["choices"] == []
    usage = usage_chunk["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert 0 < usage["completion_tokens"] <= 5


def test_completion_stream_chunks(http, model_name):
    events = _stream(http, "/v1/completions",
                     {"prompt": ["one two", "three"], "max_tokens": 4, "stream": True,
                      "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    _check_heads(chunks, "text_completion", model_name)
    for c in chunks[:-1]:
        CompletionResponse.model_validate(c)
        assert set(c["choices"][0]) == {"index", "text", "logprobs", "finish_reason"}
    by_index = _per_choice(chunks)
    assert sorted(by_index) == [0, 1]
    for choices in by_index.values():
        assert choices[-1]["finish_reason"] in ("stop", "length")
        assert all(ch["finish_reason"] is None for ch in choices[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] <= 8


def test_completion_stream_echo_first(http, engine_client):
    events = _stream(http, "/v1/completions",
                     {"prompt": "say it", "max_tokens": 2, "stream": True, "echo": True})
    assert events[0]["choices"][0]["text"] == "say it"


def test_completion_stream_logprobs_offsets_continue(http):
    events = _stream(http, "/v1/completions",
                     {"prompt": "abcdefgh", "max_tokens": 6, "stream": True, "logprobs": 1})
    offsets, tokens = [], []
    for c in events[:-1]:
        lp = c["choices"][0]["logprobs"]
        if lp:
            offsets += lp["text_offset"]
            tokens += lp["tokens"]
    assert len(tokens) >= 1
    expected = [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert offsets == expected


def test_stream_chunks_are_compact_json_lines(http):
    with http.stream("POST", "/v1/chat/completions",
                     json={"messages": MESSAGES, "max_tokens": 3, "stream": True}) as r:
        lines = [line for line in r.iter_lines()]
    data = [line for line in lines if line]
    blanks = [line for line in lines if not line]
    assert len(blanks) >= len(data) - 1  # each event ends with a blank line
    for line in data[:-1]:
        json.loads(line[len("data: "):])
    assert data[-1] == "data: [DONE]"


# ----------------------------------------------------------------- disconnects

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


# ----------------------------------------------------------------- units


def test_sse_framing():
    assert sse({"a": "é", "b": None}) == 'data: {"a": "é", "b": null}\n\n'
    assert sse("[DONE]") == "data: [DONE]\n\n"


def _receive(disconnect_after: float | None):
    """An ASGI receive that reports a disconnect after a while (None: never)."""
    async def receive() -> dict:
        if disconnect_after is None:
            await asyncio.Event().wait()
        await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}
    return receive


def test_run_until_disconnect_returns_the_result():
    async def run():
        return await run_until_disconnect(SimpleNamespace(receive=_receive(None)),
                                          asyncio.sleep(0.01, result="done"))
    assert asyncio.run(run()) == "done"


def test_run_until_disconnect_cancels_the_work():
    cancelled = []

    async def work():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def run():
        await run_until_disconnect(SimpleNamespace(receive=_receive(0.01)), work())

    with pytest.raises(ClientDisconnected):
        asyncio.run(run())
    assert cancelled == [True]


def _serve(events, disconnect_after: float | None) -> tuple[list[dict], list[str]]:
    sent, closed = [], []

    async def on_close():
        closed.append("closed")

    async def send(message):
        sent.append(message)

    async def run():
        await SSEResponse(events, on_close)({"type": "http"}, _receive(disconnect_after), send)

    asyncio.run(run())
    return sent, closed


def test_sse_response_sends_every_event_then_closes():
    async def events():
        for i in range(3):
            yield sse({"i": i})

    sent, closed = _serve(events(), disconnect_after=None)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    assert (b"text/event-stream; charset=utf-8" in dict(sent[0]["headers"]).values())
    bodies = [m["body"] for m in sent[1:]]
    assert bodies == [b'data: {"i": 0}\n\n', b'data: {"i": 1}\n\n', b'data: {"i": 2}\n\n', b""]
    assert sent[-1]["more_body"] is False and closed == ["closed"]


def test_sse_response_stops_at_disconnect_between_events():
    finished = []

    async def events():
        try:
            yield sse({"i": 0})
            await asyncio.sleep(10)  # an engine step that takes long
            yield sse({"i": 1})
        finally:
            finished.append(True)

    started = time.monotonic()
    sent, closed = _serve(events(), disconnect_after=0.05)
    assert time.monotonic() - started < 2
    assert [m.get("body") for m in sent[1:]] == [b'data: {"i": 0}\n\n']
    assert closed == ["closed"] and finished == [True]
