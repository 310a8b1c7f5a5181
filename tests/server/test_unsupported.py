"""server/unsupported.py: output-changing fields we do not implement get a
400 naming them, unless they hold their no-op value."""
from __future__ import annotations

import pytest

from server.errors import APIError
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.unsupported import GENERATION, check_unsupported, document

MESSAGES = [{"role": "user", "content": "hi"}]


def chat(**extra):
    return ChatCompletionRequest.model_validate({"messages": MESSAGES, **extra})


@pytest.mark.parametrize("field, value", [("tools", [{"type": "function"}]), ("tool_choice", "auto"),
                                          ("guided_json", {})])
def test_a_set_unsupported_field_is_refused_by_name(field, value):
    with pytest.raises(APIError) as raised:
        check_unsupported(chat(**{field: value}))
    assert raised.value.param == field


@pytest.mark.parametrize("field, value", [("tools", []), ("tool_choice", "none"), ("logit_bias", {}),
                                          ("response_format", {"type": "text"}), ("user", "x"), ("unknown", 1)])
def test_no_op_values_and_harmless_fields_pass(field, value):
    check_unsupported(chat(**{field: value}))


def test_message_fields_and_completion_only_fields():
    with pytest.raises(APIError) as raised:
        check_unsupported(chat(messages=[{"role": "assistant", "content": "x", "tool_calls": [{}]}]))
    assert raised.value.param == "messages.0.tool_calls"
    check_unsupported(CompletionRequest.model_validate({"prompt": "x", "n": 2, "best_of": 2}), completion=True)
    with pytest.raises(APIError):
        check_unsupported(CompletionRequest.model_validate({"prompt": "x", "best_of": 3}), completion=True)


def test_the_document_lists_each_field_with_its_accepted_values():
    schema = {}
    document(schema, GENERATION)
    assert schema["properties"]["tools"]["anyOf"] == [{"type": "null"}, {"type": "array", "maxItems": 0}]
    assert schema["properties"]["audio"]["anyOf"] == [{"type": "null"}]
