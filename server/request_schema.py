"""JSON Schema rules of the request models that pydantic cannot derive.

Used as `json_schema_extra` by server/protocol.py, so that the served
OpenAPI document states what the server enforces: an explicit null means
"the default" for every optional field, and the conditional rules that the
validator checks across fields (`top_logprobs` needs `logprobs: true`, ...).
"""
from __future__ import annotations

from typing import Any


def nullable_optionals(schema: dict[str, Any], model: type) -> None:
    """An explicit null means "default" for every optional field (see
    `_null_means_default` in server/protocol.py), so the document lets every
    optional field be null."""
    required = set(schema.get("required", ()))
    for name, prop in schema.get("properties", {}).items():
        if name in required or _allows_null(prop):
            continue
        schema["properties"][name] = {"anyOf": [_without_meta(prop), {"type": "null"}],
                                      **_meta(prop)}


_META_KEYS = ("title", "description", "default")


def _meta(prop: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prop.items() if k in _META_KEYS}


def _without_meta(prop: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in prop.items() if k not in _META_KEYS}


def _allows_null(prop: dict[str, Any]) -> bool:
    return prop.get("type") == "null" or any(
        alt.get("type") == "null" for alt in prop.get("anyOf", ()))


def _requires(field: str, condition: dict[str, Any], then: dict[str, Any]) -> dict[str, Any]:
    """JSON Schema: when `field` is set (not null) and matches `condition`, `then` applies."""
    return {"if": {"properties": {field: condition}, "required": [field]}, "then": then}


def chat_schema(schema: dict[str, Any], model: type) -> None:
    nullable_optionals(schema, model)
    schema["allOf"] = [
        # top_logprobs needs logprobs: true (as in OpenAI's API).
        _requires("top_logprobs", {"type": "integer"},
                  {"properties": {"logprobs": {"const": True}}, "required": ["logprobs"]}),
        _STREAM_OPTIONS_NEED_STREAM,
        _TRACE_NEEDS_STREAM,
    ]


def completion_schema(schema: dict[str, Any], model: type) -> None:
    nullable_optionals(schema, model)
    schema["allOf"] = [
        # echo=true with logprobs would need prompt logprobs, which we do not compute.
        _requires("logprobs", {"type": "integer"},
                  {"not": {"properties": {"echo": {"const": True}}, "required": ["echo"]}}),
        _STREAM_OPTIONS_NEED_STREAM,
        _TRACE_NEEDS_STREAM,
    ]


_STREAM_OPTIONS_NEED_STREAM = _requires(
    "stream_options", {"type": "object"},
    {"properties": {"stream": {"const": True}}, "required": ["stream"]})

_TRACE_NEEDS_STREAM = _requires(
    "specserve", {"type": "object", "properties": {"trace": {"const": True}}, "required": ["trace"]},
    {"properties": {"stream": {"const": True}}, "required": ["stream"]})
