"""Every failure is an OpenAI error body with the right status."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

from tests.server.fake_engine import FakeEngineClient
from tests.server.helpers import assert_error, live_server, parse_sse

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "hi"}]


def _chat(**kw):
    body = {"messages": MESSAGES, "max_tokens": 4}
    body.update(kw)
    return body


# ----------------------------------------------------------------- 400


@pytest.mark.parametrize("body, param", [
    (_chat(temperature=-0.5), "temperature"),
    (_chat(temperature=False), "temperature"),
    (_chat(temperature="0.5"), "temperature"),
    (_chat(top_p=0), "top_p"),
    (_chat(top_p=1.5), "top_p"),
    (_chat(n=0), "n"),
    (_chat(n=1.5), "n"),
    (_chat(n=True), "n"),
    (_chat(n="2"), "n"),
    (_chat(max_tokens=0), "max_tokens"),
    (_chat(max_tokens=2.5), "max_tokens"),
    (_chat(stream="yes"), "stream"),
    (_chat(presence_penalty=3), "presence_penalty"),
    (_chat(repetition_penalty=0), "repetition_penalty"),
    (_chat(top_logprobs=21, logprobs=True), "top_logprobs"),
    (_chat(top_logprobs=2), "top_logprobs"),
    (_chat(stream_options={"include_usage": True}), "stream_options"),
    (_chat(stop=[""]), "stop"),
    (_chat(stop=[1]), "stop"),
    (_chat(seed="1"), "seed"),
    ({"messages": []}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"max_tokens": 3}, "messages"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"content": "hi"}]}, "messages.0.role"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     "messages.0.content"),
])
def test_chat_invalid_values(http, body, param):
    err = assert_error(http.post(CHAT, json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert err["param"] is not None and err["param"].startswith(param), err


@pytest.mark.parametrize("body, param", [
    ({"prompt": ""}, "prompt"),
    ({"prompt": []}, "prompt"),
    ({"prompt": [10**9]}, "prompt"),
    ({"prompt": [1.5]}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "logprobs": True}, "logprobs"),
    ({"prompt": "x", "logprobs": 21}, "logprobs"),
    ({"prompt": "x", "echo": True, "logprobs": 1}, "echo"),
])
def test_completion_invalid_values(http, body, param):
    err = assert_error(http.post("/v1/completions", json=body), 400)
    assert err["param"] is not None and err["param"].startswith(param), err


@pytest.mark.parametrize("content", [b"{bad json", b"", b"[1, 2]", b"null", b'"text"'])
def test_malformed_json_is_400(http, content):
    r = http.post(CHAT, content=content, headers={"content-type": "application/json"})
    assert_error(r, 400)


def test_context_overflow(http, engine_client):
    limit = engine_client.max_model_len
    err = assert_error(http.post(CHAT, json=_chat(max_tokens=limit)), 400, param="max_tokens")
    assert str(limit) in err["message"]
    err = assert_error(http.post(CHAT, json=_chat(max_tokens=None, max_completion_tokens=limit)),
                       400, param="max_completion_tokens")
    long_text = "word " * (limit * 2)
    assert_error(http.post(CHAT, json={"messages": [{"role": "user", "content": long_text}]}),
                 400, param="messages")
    assert_error(http.post("/v1/completions", json={"prompt": long_text}), 400, param="prompt")
    assert_error(http.post("/v1/completions", json={"prompt": "abc", "max_tokens": limit}),
                 400, param="max_tokens")


def test_extra_fields_ignored(http):
    r = http.post(CHAT, json=_chat(some_future_field={"x": 1}, logit_bias={}, tools=[]))
    assert r.status_code == 200, r.text


def test_openai_client_maps_400(openai_client, model_name):
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.chat.completions.create(model=model_name, messages=MESSAGES,
                                              temperature=-1)
    assert info.value.body["param"] == "temperature"


# ----------------------------------------------------------------- 404 / 405


def test_unknown_model_404(http, openai_client):
    assert_error(http.post(CHAT, json=_chat(model="gpt-17")), 404, param="model",
                 code="model_not_found")
    assert_error(http.post("/v1/completions", json={"model": "gpt-17", "prompt": "x"}), 404,
                 param="model")
    with pytest.raises(openai.NotFoundError):
        openai_client.chat.completions.create(model="gpt-17", messages=MESSAGES)


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing-here"), 404)
    assert_error(http.post("/nowhere", json={}), 404)
    assert_error(http.get(CHAT), 405)


# ----------------------------------------------------------------- 401


def test_api_key():
    with live_server(FakeEngineClient(), api_key="sekret") as srv, \
            httpx.Client(base_url=srv.url) as http:
        assert_error(http.post(CHAT, json=_chat()), 401, code="invalid_api_key")
        assert_error(http.post(CHAT, json=_chat(), headers={"Authorization": "Bearer nope"}), 401)
        assert_error(http.get("/v1/models", headers={"Authorization": "sekret"}), 401)
        ok = {"Authorization": "Bearer sekret"}
        assert http.post(CHAT, json=_chat(), headers=ok).status_code == 200
        assert http.get("/v1/models", headers=ok).status_code == 200
        assert http.get("/health").status_code == 200  # probes need no key
        assert http.get("/metrics").status_code == 200  # nor do scrapers
        bad = openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        good = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekret", max_retries=0)
        assert good.models.list().data


# ----------------------------------------------------------------- 413


def test_body_too_large():
    with live_server(FakeEngineClient(), max_body_bytes=2048) as srv, \
            httpx.Client(base_url=srv.url) as http:
        big = _chat(messages=[{"role": "user", "content": "x" * 4096}])
        assert_error(http.post(CHAT, json=big), 413, code="request_too_large")

        def chunked():  # no Content-Length: the streamed size must be checked
            data = json.dumps(big).encode()
            for i in range(0, len(data), 512):
                yield data[i:i + 512]

        r = http.post(CHAT, content=chunked(), headers={"content-type": "application/json"})
        assert "content-length" not in r.request.headers
        assert_error(r, 413)
        small = http.post(CHAT, json=_chat())
        assert small.status_code == 200, small.text


# ----------------------------------------------------------------- 429


def test_queue_full_429():
    with live_server(FakeEngineClient(queue_full=True)) as srv, \
            httpx.Client(base_url=srv.url) as http:
        for stream in (False, True):
            r = http.post(CHAT, json=_chat(stream=stream))
            assert_error(r, 429, code="rate_limit_exceeded")
            assert int(r.headers["retry-after"]) >= 1
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="fake-model", messages=MESSAGES)


# ----------------------------------------------------------------- 503


def test_dead_engine_503():
    with live_server(FakeEngineClient(dead=True)) as srv, httpx.Client(base_url=srv.url) as http:
        assert_error(http.get("/health"), 503)
        assert_error(http.post(CHAT, json=_chat()), 503)
        assert_error(http.post(CHAT, json=_chat(stream=True)), 503)
        assert_error(http.post("/v1/completions", json={"prompt": "x"}), 503)


def test_engine_dies_mid_request():
    engine = FakeEngineClient(fail_after=3)
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        assert_error(http.post(CHAT, json=_chat(max_tokens=10)), 503)
        engine.dead = False
        with http.stream("POST", CHAT, json=_chat(max_tokens=10, stream=True)) as r:
            assert r.status_code == 200
            events = parse_sse(r.read().decode().split("\n"))
        assert "[DONE]" not in events
        assert set(events[-1]) == {"error"} and events[-1]["error"]["type"] == "server_error"
        assert_error(http.get("/health"), 503)


def test_engine_dies_mid_stream_openai_client():
    engine = FakeEngineClient(fail_after=3)
    with live_server(engine) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIError):
            for _ in client.chat.completions.create(model="fake-model", messages=MESSAGES,
                                                    max_tokens=10, stream=True):
                pass


# ----------------------------------------------------------------- 500


class _BrokenEngine(FakeEngineClient):
    async def generate(self, request_id, prompt_token_ids, params):
        raise RuntimeError("secret internal detail")
        yield  # pragma: no cover - makes this an async generator


class _BrokenTemplate(FakeEngineClient):
    def __init__(self):
        super().__init__()
        self.tokenizer.apply_chat_template = self._explode

    @staticmethod
    def _explode(messages, add_generation_prompt=True):
        raise KeyError("boom")


def test_unexpected_errors_500_without_details():
    with live_server(_BrokenEngine()) as srv, httpx.Client(base_url=srv.url) as http:
        for stream in (False, True):
            err = assert_error(http.post(CHAT, json=_chat(stream=stream)), 500)
            assert "secret" not in err["message"] and err["type"] == "server_error"
    with live_server(_BrokenTemplate()) as srv, httpx.Client(base_url=srv.url) as http:
        err = assert_error(http.post(CHAT, json=_chat()), 500)
        assert "boom" not in err["message"]


def test_template_value_error_is_400():
    engine = FakeEngineClient()

    def reject(messages, add_generation_prompt=True):
        raise ValueError("the template needs alternating roles")

    engine.tokenizer.apply_chat_template = reject
    with live_server(engine) as srv, httpx.Client(base_url=srv.url) as http:
        err = assert_error(http.post(CHAT, json=_chat()), 400, param="messages")
        assert "alternating" in err["message"]


# ----------------------------------------------------------------- OpenAPI


def test_openapi_documents_errors(http):
    spec = http.get("/openapi.json").json()
    for path in (CHAT, "/v1/completions"):
        responses = spec["paths"][path]["post"]["responses"]
        for status in ("200", "400", "401", "404", "413", "429", "500", "503"):
            assert status in responses, (path, status)
        assert "text/event-stream" in responses["200"]["content"]
    schema = spec["components"]["schemas"]
    assert {"ErrorResponse", "ChatCompletionRequest", "CompletionRequest"} <= set(schema)
    assert "503" in spec["paths"]["/health"]["get"]["responses"]


def test_explicit_nulls_mean_defaults(http):
    body = {"messages": [{"role": "user", "content": "hi", "name": None}], "max_tokens": 3,
            "temperature": None, "n": None, "stream": None, "logprobs": None, "stop": None,
            "seed": None, "stream_options": None, "speculative": None}
    r = http.post(CHAT, json=body)
    assert r.status_code == 200, r.text
    assert len(r.json()["choices"]) == 1
