"""Raw Server-Sent Events: every chunk's fields, ordering, usage and [DONE]."""
from __future__ import annotations

import json

from server.protocol import ChatCompletionChunk, CompletionResponse
from tests.server.helpers import parse_sse

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
