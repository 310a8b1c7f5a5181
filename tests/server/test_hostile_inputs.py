"""Regression tests for issue 11: requests a hostile or careless client sends.

Each section names the defect it covers. The shared server runs the REAL
engine (tiny random model, n-gram speculation); tests that need a fake
engine (to see what reached it) build their own.
"""
from __future__ import annotations

import json
import time

import httpx
import pytest

from server.limits import RequestLimits
from server.protocol import INT64_MAX, INT64_MIN
from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error, live_server

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MESSAGES = [{"role": "user", "content": "hello there"}]


def _chat(**kw):
    return {"messages": MESSAGES, "max_tokens": 4, **kw}


def _healthy(http) -> None:
    """The engine still serves: /health and a normal request both succeed."""
    assert http.get("/health").status_code == 200
    r = http.post(CHAT, json=_chat(max_tokens=3))
    assert r.status_code == 200, r.text


# ------------------------------------------------------- 1. seeds out of range


@pytest.mark.parametrize("seed", [2**64, 10**30, INT64_MIN - 1, 2**64 - 100, INT64_MAX + 1])
def test_out_of_range_seed_is_400_and_the_engine_lives(http, seed):
    assert_error(http.post(CHAT, json=_chat(seed=seed, temperature=1.0)), 400, param="seed")
    _healthy(http)


@pytest.mark.parametrize("seed", [INT64_MAX, INT64_MIN, INT64_MAX - 100, -1, 0])
def test_extreme_int64_seeds_with_many_choices_are_served(http, seed):
    """Choice seeds (seed + i) and the drafter's offset go past int64: they wrap."""
    for stream in (False, True):
        r = http.post(CHAT, json=_chat(seed=seed, n=4, temperature=1.0, stream=stream))
        assert r.status_code == 200, r.text
    _healthy(http)


def test_same_seed_same_output_at_the_int64_edge(http):
    body = _chat(seed=INT64_MAX, temperature=1.0, max_tokens=6)
    first, second = (http.post(CHAT, json=body).json() for _ in range(2))
    assert first["choices"][0]["message"] == second["choices"][0]["message"]


# ---------------------------------------------- 3. amplification by fan-out


def test_huge_prompt_list_times_n_is_refused_before_any_work():
    engine = FakeEngineClient()
    body = {"prompt": ["x"] * 4000, "n": 128, "max_tokens": 1}
    with live_server(engine) as srv, httpx.Client(base_url=srv.url, timeout=30) as http:
        started = time.monotonic()
        assert_error(http.post(COMPLETIONS, json=body), 400, param="prompt")
        assert time.monotonic() - started < 2.0  # was 23 s and +1.7 GB
        assert_error(http.post(COMPLETIONS, json={**body, "prompt": ["x"] * 100, "n": 2}), 400,
                     param="n")
        assert engine.attempted == []
        assert http.get("/health").status_code == 200


def test_limits_are_configurable_and_in_the_openapi_document():
    engine = FakeEngineClient()
    limits = RequestLimits(max_prompts=3, max_choices=4)
    with live_server(engine, limits=limits) as srv, httpx.Client(base_url=srv.url) as http:
        assert_error(http.post(COMPLETIONS, json={"prompt": ["a"] * 4}), 400, param="prompt")
        assert_error(http.post(COMPLETIONS, json={"prompt": ["a", "b"], "n": 3}), 400,
                     param="n")
        assert_error(http.post(CHAT, json=_chat(n=5)), 400, param="n")
        ok = http.post(COMPLETIONS, json={"prompt": ["a", "b"], "n": 2, "max_tokens": 1})
        assert ok.status_code == 200 and len(ok.json()["choices"]) == 4
        prompt = http.get("/openapi.json").json()["components"]["schemas"]["CompletionRequest"][
            "properties"]["prompt"]
        lists = [alt for alt in prompt["anyOf"] if alt.get("maxItems") is not None]
        assert [alt["maxItems"] for alt in lists] == [3, 3]  # texts, lists of ids


def test_a_request_that_cannot_be_admitted_whole_is_429_before_any_job():
    engine = FakeEngineClient(queue_full=True)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        r = http.post(COMPLETIONS, json={"prompt": ["a", "b"], "n": 3, "max_tokens": 1})
        assert_error(r, 429)
        assert engine.attempted == []  # refused whole: no job was ever started


# -------------------------------------------- 4. lone surrogates, keep-alive


@pytest.mark.parametrize("raw, param", [
    (b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "\\udfff"}]}]}',
     "messages.0.content"),
    (b'{"messages": [{"role": "user", "content": "hi", "name": "\\ud800"}]}', "messages.0.name"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\ud800"]}', "stop"),
    (b'{"messages": [{"role": "user", "content": "hi"}], "model": "\\ud800"}', "model"),
    (b'{"prompt": "\\ud800"}', "prompt"),
    (b'{"prompt": ["ok", "\\udc00"]}', "prompt"),
])
def test_lone_surrogates_are_400(http, raw, param):
    path = COMPLETIONS if b'"prompt"' in raw else CHAT
    err = assert_error(http.post(path, content=raw, headers={"content-type": "application/json"}),
                       400)
    assert err["param"].startswith(param), err
    _healthy(http)  # the same pooled connection still works


def test_a_surrogate_pair_is_fine(http):
    raw = b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}'
    assert http.post(CHAT, content=raw, headers={"content-type": "application/json"}
                     ).status_code == 200


class _ExplodingTokenizer(FakeEngineClient):
    """An engine whose chat template raises an unexpected error (a server bug)."""

    def __init__(self):
        super().__init__()

        def explode(messages, add_generation_prompt=True):
            raise RuntimeError("secret detail")

        self.tokenizer.encode_chat = explode


def test_an_unexpected_500_keeps_the_keep_alive_connection_usable():
    with live_server(_ExplodingTokenizer()) as srv, httpx.Client(base_url=srv.url) as http:
        for _ in range(3):
            err = assert_error(http.post(CHAT, json=_chat()), 500)
            assert "secret" not in err["message"]
            r = http.get("/v1/models")  # the next request on the pooled connection
            assert r.status_code == 200, r.text
            assert r.headers.get("connection") != "close"


# ------------------------------------------------- 6. unimplemented fields


@pytest.mark.parametrize("path, extra, param", [
    (CHAT, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    (CHAT, {"tool_choice": "auto"}, "tool_choice"),
    (CHAT, {"tool_choice": {"type": "function", "function": {"name": "f"}}}, "tool_choice"),
    (CHAT, {"functions": [{"name": "f"}]}, "functions"),
    (CHAT, {"reasoning_effort": "low"}, "reasoning_effort"),
    (CHAT, {"modalities": ["text", "audio"]}, "modalities"),
    (CHAT, {"messages": [{"role": "assistant", "content": None,
                          "tool_calls": [{"id": "1", "type": "function"}]}]},
     "messages.0.tool_calls"),
    (COMPLETIONS, {"prompt": "x", "suffix": "end"}, "suffix"),
    (COMPLETIONS, {"prompt": "x", "best_of": 3}, "best_of"),
])
def test_unimplemented_fields_are_400_naming_them(http, path, extra, param):
    body = (_chat() if path == CHAT else {"max_tokens": 2}) | extra
    err = assert_error(http.post(path, json=body), 400, param=param,
                       code="unsupported_parameter")
    assert param in err["message"] and "not supported" in err["message"]


@pytest.mark.parametrize("path, extra", [
    (CHAT, {"tools": [], "tool_choice": "none", "logit_bias": {},
            "response_format": {"type": "text"}, "modalities": ["text"],
            "parallel_tool_calls": False, "store": False, "metadata": {"k": "v"},
            "user": "u1", "service_tier": "auto"}),
    (CHAT, {"tools": None, "logit_bias": None, "response_format": None}),
    (COMPLETIONS, {"prompt": "x", "suffix": "", "best_of": 2, "n": 2}),
])
def test_no_op_values_of_unimplemented_fields_are_accepted(http, path, extra):
    body = (_chat() if path == CHAT else {"max_tokens": 2}) | extra
    assert http.post(path, json=body).status_code == 200


# ------------------------------------------------------------ 7. ranges


@pytest.mark.parametrize("raw_field, param", [
    ('"temperature": Infinity', "temperature"),
    ('"temperature": NaN', "temperature"),
    ('"temperature": 1e6', "temperature"),
    ('"temperature": 2.0001', "temperature"),
    ('"repetition_penalty": Infinity', "repetition_penalty"),
    ('"repetition_penalty": 1e6', "repetition_penalty"),
    ('"top_p": -Infinity', "top_p"),
    ('"frequency_penalty": 2.5', "frequency_penalty"),
    ('"min_p": 1.5', "min_p"),
    ('"top_k": -2', "top_k"),
    ('"max_tokens": 1e400', "max_tokens"),
])
def test_out_of_range_numbers_are_400(http, raw_field, param):
    raw = '{"messages": [{"role": "user", "content": "hi"}], ' + raw_field + "}"
    r = http.post(CHAT, content=raw.encode(), headers={"content-type": "application/json"})
    assert_error(r, 400, param=param)


def test_tiny_temperatures_are_greedy_not_nan(http):
    greedy = http.post(CHAT, json=_chat(temperature=0, max_tokens=8)).json()
    for temperature in (1e-50, 1e-300, 5e-324, 1e-6):
        r = http.post(CHAT, json=_chat(temperature=temperature, max_tokens=8))
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"] == greedy["choices"][0]["message"]


@pytest.mark.parametrize("stop, param", [
    (["a", "b", "c", "d", "e"], "stop"),
    (["x" * 257], "stop.0"),
    ("y" * 257, "stop"),
    ([""], "stop.0"),
])
def test_stop_strings_are_bounded(http, stop, param):
    err = assert_error(http.post(CHAT, json=_chat(stop=stop)), 400)
    assert err["param"] == param, err


def test_stop_token_ids_are_bounded(http, engine_client):
    assert_error(http.post(CHAT, json=_chat(stop_token_ids=list(range(65)))), 400,
                 param="stop_token_ids")
    err = assert_error(http.post(CHAT, json=_chat(stop_token_ids=[engine_client.vocab_size])),
                       400, param="stop_token_ids")
    assert str(engine_client.vocab_size) in err["message"]
    assert http.post(CHAT, json=_chat(stop="x" * 256, stop_token_ids=[1, 2])).status_code == 200


def test_integral_floats_are_integers_as_in_json(http):
    r = http.post(CHAT, json=_chat(max_tokens=2.0, n=2.0, seed=7.0))
    assert r.status_code == 200 and len(r.json()["choices"]) == 2
    assert_error(http.post(CHAT, json=_chat(n=2.5)), 400, param="n")
    assert_error(http.post(CHAT, json=_chat(n=True)), 400, param="n")


# ------------------------------------------------------------ 9. auth first


@pytest.mark.parametrize("content", [b"{not json", b"x" * 5000,
                                     b'{"messages": [{"role": "wizard"}]}'])
def test_the_key_is_checked_before_the_body_is_read(content):
    with live_server(FakeEngineClient(), api_key="k", max_body_bytes=1000) as srv, \
            httpx.Client(base_url=srv.url) as http:
        headers = {"content-type": "application/json"}
        assert_error(http.post(CHAT, content=content, headers=headers), 401,
                     code="invalid_api_key")
        with_key = http.post(CHAT, content=content, headers=headers | {
            "authorization": "Bearer k"})
        assert with_key.status_code in (400, 413)


def test_metrics_key_protects_metrics_only():
    with live_server(FakeEngineClient(), metrics_api_key="m") as srv, \
            httpx.Client(base_url=srv.url) as http:
        assert_error(http.get("/metrics"), 401)
        assert_error(http.get("/metrics", headers={"authorization": "Bearer wrong"}), 401)
        assert http.get("/metrics", headers={"authorization": "Bearer m"}).status_code == 200
        assert http.get("/health").status_code == 200
        assert http.post(CHAT, json=_chat()).status_code == 200  # no API key set


def test_api_key_does_not_open_metrics_nor_the_reverse():
    with live_server(FakeEngineClient(), api_key="a", metrics_api_key="m") as srv, \
            httpx.Client(base_url=srv.url) as http:
        assert_error(http.get("/metrics", headers={"authorization": "Bearer a"}), 401)
        assert_error(http.get("/v1/models", headers={"authorization": "Bearer m"}), 401)


# ------------------------------------------------ 9. the document matches


def test_openapi_states_what_the_server_enforces(http):
    doc = http.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    chat, completion = schemas["ChatCompletionRequest"], schemas["CompletionRequest"]
    prompt_forms = completion["properties"]["prompt"]["anyOf"]
    assert {"type": "string", "minLength": 1} in prompt_forms  # "" is refused, and says so
    assert all(alt.get("minItems") == 1 for alt in prompt_forms if alt["type"] == "array")
    needs_logprobs = next(rule for rule in chat["allOf"]
                          if "top_logprobs" in rule["if"]["properties"])
    assert needs_logprobs["then"]["properties"]["logprobs"] == {"const": True}
    seed = next(alt for alt in chat["properties"]["seed"]["anyOf"] if alt["type"] == "integer")
    assert (seed["minimum"], seed["maximum"]) == (INT64_MIN, INT64_MAX)
    assert chat["properties"]["tools"]["anyOf"] == [{"type": "null"},
                                                    {"type": "array", "maxItems": 0}]
    assert chat["properties"]["n"]["anyOf"][1] == {"type": "null"}  # null means the default


@pytest.mark.parametrize("path, body", [
    (CHAT, _chat(stream=True, n=2, logprobs=True, top_logprobs=2,
                 stream_options={"include_usage": True})),
    (COMPLETIONS, {"prompt": ["ab", "cd"], "max_tokens": 3, "stream": True, "logprobs": 1,
                   "echo": False}),
])
def test_streamed_events_match_the_documented_event_schema(http, path, body):
    jsonschema_rs = pytest.importorskip("jsonschema_rs")
    doc = http.get("/openapi.json").json()
    item = doc["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"][
        "itemSchema"]
    data_schema = item["properties"]["data"]["else"]["contentSchema"]
    validator = jsonschema_rs.validator_for({**data_schema, "components": doc["components"]})
    with http.stream("POST", path, json=body) as r:
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        assert line.startswith("data: ")
        validator.validate(json.loads(line[len("data: "):]))
