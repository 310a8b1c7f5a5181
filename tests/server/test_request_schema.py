"""server/request_schema.py: the served schema says what the validator
enforces: null means default, and the cross-field rules."""
from __future__ import annotations

from pydantic import BaseModel

from server.protocol import ChatCompletionRequest, CompletionRequest
from server.request_schema import nullable_optionals


class Toy(BaseModel):
    required: int
    optional: int = 3
    already: int | None = None


def test_optional_fields_may_be_null_and_required_ones_not():
    schema = Toy.model_json_schema()
    nullable_optionals(schema, Toy)
    props = schema["properties"]
    assert props["required"] == {"title": "Required", "type": "integer"}
    assert props["optional"]["anyOf"] == [{"type": "integer"}, {"type": "null"}]
    assert props["optional"]["default"] == 3 and "default" not in props["optional"]["anyOf"][0]
    assert props["already"] == Toy.model_json_schema()["properties"]["already"]  # left as it was


def test_the_cross_field_rules_are_in_the_documents():
    chat = ChatCompletionRequest.model_json_schema()
    rules = {tuple(rule["if"]["required"]): rule["then"] for rule in chat["allOf"]}
    assert rules[("top_logprobs",)]["properties"]["logprobs"] == {"const": True}
    assert rules[("stream_options",)]["properties"]["stream"] == {"const": True}
    completion = CompletionRequest.model_json_schema()
    rules = {tuple(rule["if"]["required"]): rule["then"] for rule in completion["allOf"]}
    assert rules[("logprobs",)]["not"]["properties"]["echo"] == {"const": True}
