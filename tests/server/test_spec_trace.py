"""The `specserve` SSE extension (server/spec_trace.py) on the real engine
(tiny random model, n-gram speculation): off by default, strict about its
options, ignored by the official openai client, and consistent with the
streamed text."""
from __future__ import annotations

import json

import pytest

from engine.outputs import EngineStats, RequestOutput
from engine.trace import StepLoad, StepTrace
from server.spec_trace import trace_extension
from tests.server.helpers import assert_error, parse_sse

# Repetitive text: the n-gram drafter finds matches in it, and the tiny
# random model tends to loop, so drafts get accepted.
PROMPT = "a b c d a b c d a b c d a b c d a b c d a b c d"
MESSAGES = [{"role": "user", "content": PROMPT}]
SOURCES = {"accepted", "corrected", "bonus", "plain"}
CHUNK_KEYS = {"id", "object", "created", "model", "choices"}


def stream(http, path, **body):
    with http.stream("POST", path, json={"stream": True, **body}) as r:
        assert r.status_code == 200, r.read()
        return parse_sse(r.read().decode().split("\n"))


def chat(http, model_name, **extra):
    return stream(http, "/v1/chat/completions", model=model_name, messages=MESSAGES,
                  temperature=0, max_tokens=48, **extra)


def content(chunks):
    return "".join(c["choices"][0]["delta"].get("content", "")
                   for c in chunks if isinstance(c, dict) and c["choices"])


def traces(chunks):
    return [c["specserve"] for c in chunks if isinstance(c, dict) and "specserve" in c]


def test_without_the_flag_chunks_carry_no_extension(http, model_name):
    for flag in ({}, {"specserve": {}}, {"specserve": {"trace": False}}, {"specserve": None}):
        chunks = chat(http, model_name, **flag)
        assert chunks[-1] == "[DONE]"
        assert all(set(c) == CHUNK_KEYS for c in chunks[:-1]), flag


def test_trace_says_how_every_token_was_made(http, model_name):
    plain = chat(http, model_name)
    traced = chat(http, model_name, specserve={"trace": True})
    text = content(traced)
    assert text == content(plain)  # greedy: the extension changes no token
    steps = traces(traced)
    tokens = [t for step in steps for t in step["tokens"]]
    assert tokens and {t["source"] for t in tokens} <= SOURCES
    # The texts run ahead of the content at most by a stop string's cut.
    assert "".join(t["text"] for t in tokens).startswith(text)
    for step in steps:
        assert step["index"] == 0 and 0 <= step["accepted"] <= step["verified"]
        sources = [t["source"] for t in step["tokens"]]
        if step["verified"] == 0:
            assert set(sources) == {"plain"} and {t["drafter"] for t in step["tokens"]} == {None}
        else:
            assert "plain" not in sources and {t["drafter"] for t in step["tokens"]} == {"ngram"}
        load = step["load"]
        assert load["batch_size"] >= 1 and load["batched_tokens"] >= load["batch_size"]
        assert load["queue"] >= 0 and load["step_ms"] > 0 and load["sps"] > 0
        assert 0 <= load["kv_cache_usage"] <= 1
    assert any(s["verified"] for s in steps), "n-gram speculation never ran on a repetitive prompt"


def test_trace_on_legacy_completions_with_n(http, model_name):
    chunks = stream(http, "/v1/completions", model=model_name, prompt=PROMPT, n=2,
                    temperature=0.8, seed=3, max_tokens=16, specserve={"trace": True})
    steps = traces(chunks)
    assert {s["index"] for s in steps} == {0, 1}
    for index in (0, 1):
        text = "".join(c["choices"][0]["text"] for c in chunks[:-1]
                       if c["choices"] and c["choices"][0]["index"] == index)
        traced = "".join(t["text"] for s in steps if s["index"] == index for t in s["tokens"])
        assert traced.startswith(text)


def test_the_openai_client_parses_a_traced_stream(openai_client, model_name):
    kwargs = dict(model=model_name, messages=MESSAGES, temperature=0, max_tokens=32, stream=True)
    plain = "".join(c.choices[0].delta.content or "" for c in
                    openai_client.chat.completions.create(**kwargs) if c.choices)
    chunks = list(openai_client.chat.completions.create(
        **kwargs, extra_body={"specserve": {"trace": True}}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == plain
    extensions = [c.model_extra["specserve"] for c in chunks if "specserve" in (c.model_extra or {})]
    assert extensions and all(e["tokens"] for e in extensions)


@pytest.mark.parametrize("specserve, param", [
    ({"trcae": True}, "specserve.trcae"),
    ({"trace": "yes"}, "specserve.trace"),
    ([True], "specserve"),
])
def test_bad_options_are_a_400(http, model_name, specserve, param):
    response = http.post("/v1/chat/completions", json={
        "model": model_name, "messages": MESSAGES, "stream": True, "specserve": specserve})
    body = assert_error(response, 400)
    assert param in json.dumps(body)


def test_trace_needs_stream(http, model_name):
    response = http.post("/v1/chat/completions", json={
        "model": model_name, "messages": MESSAGES, "specserve": {"trace": True}})
    assert_error(response, 400, param="specserve.trace")


def test_the_served_schema_documents_the_extension(http):
    schema = http.get("/openapi.json").json()
    options = schema["components"]["schemas"]["SpecserveOptions"]
    assert options["additionalProperties"] is False
    assert "trace" in options["properties"]


def _output(trace):
    return RequestOutput(request_id="r", new_token_ids=[5, 6], new_text="ab", finished=False,
                         finish_reason=None, num_prompt_tokens=3, num_output_tokens=2, trace=trace)


def test_extension_of_one_output():
    load = StepLoad(num_requests=3, num_tokens=9, num_waiting=2, step_ms=20.0)
    stats = EngineStats(kv_cache_usage=0.25)
    assert trace_extension(0, _output(None), stats) is None
    corrected = trace_extension(1, _output(StepTrace(4, 1, "ngram", load, ("a", "b"))), stats)
    assert corrected == {
        "index": 1, "verified": 4, "accepted": 1,
        "tokens": [{"text": "a", "source": "accepted", "drafter": "ngram"},
                   {"text": "b", "source": "corrected", "drafter": "ngram"}],
        "load": {"batch_size": 3, "batched_tokens": 9, "queue": 2, "step_ms": 20.0, "sps": 50.0,
                 "kv_cache_usage": 0.25}}
    plain = trace_extension(0, _output(StepTrace(0, 0, "", load, ("a", "b"))), stats)
    assert [t["source"] for t in plain["tokens"]] == ["plain", "plain"]
    assert {t["drafter"] for t in plain["tokens"]} == {None}
