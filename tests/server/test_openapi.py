"""server/openapi.py: the served document states the stream events, our
limits, the refused fields and the key."""
from __future__ import annotations

from fastapi.testclient import TestClient

from server.app import create_app
from server.limits import RequestLimits
from server.protocol import ChatCompletionChunk
from server.openapi import sse_event_schema
from tests.server.fake_engine import FakeEngineClient


def document(**kwargs):
    with TestClient(create_app(FakeEngineClient(model_name="m"), **kwargs)) as http:
        return http.get("/openapi.json").json()


def test_streams_limits_and_unsupported_fields_are_documented():
    doc = document(limits=RequestLimits(max_prompts=3, max_choices=5))
    stream = doc["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["text/event-stream"]
    assert stream["itemSchema"] == sse_event_schema(ChatCompletionChunk)
    schemas = doc["components"]["schemas"]
    assert "tools" in schemas["ChatCompletionRequest"]["properties"]
    prompt_lists = [alt for alt in schemas["CompletionRequest"]["properties"]["prompt"]["anyOf"] if "maxItems" in alt]
    assert len(prompt_lists) == 2 and all(alt["maxItems"] == 3 for alt in prompt_lists)
    n = [alt for alt in schemas["ChatCompletionRequest"]["properties"]["n"]["anyOf"] if alt.get("type") == "integer"]
    assert n[0]["maximum"] == 5
    assert "securitySchemes" not in doc.get("components", {})


def test_the_bearer_key_is_documented_when_one_is_set():
    doc = document(api_key="k")
    assert doc["components"]["securitySchemes"]
    assert doc["paths"]["/v1/chat/completions"]["post"]["security"] == [{"bearerKey": []}]
    assert "security" not in doc["paths"]["/health"]["get"]


def test_an_event_is_a_chunk_or_the_done_marker():
    schema = sse_event_schema(ChatCompletionChunk)
    assert "[DONE]" in str(schema) and "ChatCompletionChunk" in str(schema)
