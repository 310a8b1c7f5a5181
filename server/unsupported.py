"""OpenAI request fields that would change the output but are not implemented.

The one place where such fields are refused: a request that sets one of them
to anything but its no-op value gets a 400 naming the field, never a 200
that silently ignored it. The served OpenAPI document lists them with the
values that are accepted (`document`). Lifting a rejection (when a field
gets implemented) means deleting its entry here and declaring the field in
server/protocol.py.

Accepted as no-ops: `tools: []`, `tool_choice: "none"`, `suffix: ""`, `best_of` equal to `n`,
`modalities: ["text"]`, and null for any of them. Fields that do not change
the output (`user`, `store`, `metadata`, `service_tier`,
`parallel_tool_calls`, `prediction`) and unknown fields are ignored, as
OpenAI's API accepts them. `logit_bias` and `response_format` are implemented
(server/protocol.py declares them; engine/structured/ enforces the grammars).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel

from server import errors


@dataclass(frozen=True)
class Unsupported:
    """A field we refuse unless it holds its no-op value (`accepts`, `schema`)."""

    accepts: Callable[[Any], bool] = lambda value: False
    schema: dict[str, Any] | None = None  # JSON schema of the accepted values (None: none)


_EMPTY_LIST = Unsupported(lambda v: v == [], {"type": "array", "maxItems": 0})
_NONE_CHOICE = Unsupported(lambda v: v == "none", {"const": "none"})
_ALWAYS = Unsupported()

GENERATION: dict[str, Unsupported] = {
    "tools": _EMPTY_LIST,
    "tool_choice": _NONE_CHOICE,
    "functions": _EMPTY_LIST,
    "function_call": _NONE_CHOICE,
    "reasoning_effort": _ALWAYS,
    "audio": _ALWAYS,
    "modalities": Unsupported(lambda v: v == ["text"], {"const": ["text"]}),
    "web_search_options": _ALWAYS,
    "guided_json": _ALWAYS,
    "guided_regex": _ALWAYS,
    "guided_choice": _ALWAYS,
    "guided_grammar": _ALWAYS,
}
COMPLETION: dict[str, Unsupported] = GENERATION | {
    "suffix": Unsupported(lambda v: v == "", {"const": ""}),
    # best_of == n is a no-op too (checked in check_unsupported; the schema cannot say it).
    "best_of": Unsupported(lambda v: v == 1, {"const": 1}),
}
MESSAGE: dict[str, Unsupported] = {
    "tool_calls": _EMPTY_LIST,
    "function_call": _ALWAYS,
    "audio": _ALWAYS,
}


def check_unsupported(body: BaseModel, completion: bool = False) -> None:
    """400 for the first unsupported field `body` (a request) sets."""
    extra = dict(body.model_extra or {})
    if completion and extra.get("best_of") == getattr(body, "n", None):
        del extra["best_of"]  # best_of == n: each choice is its own best
    _check(extra, COMPLETION if completion else GENERATION, "")
    for i, message in enumerate(getattr(body, "messages", ())):
        _check(message.model_extra or {}, MESSAGE, f"messages.{i}.")


def _check(extra: dict[str, Any], table: dict[str, Unsupported], prefix: str) -> None:
    for name, field in table.items():
        if name in extra and not field.accepts(extra[name]):
            raise errors.not_supported(prefix + name)


def document(object_schema: dict[str, Any], table: dict[str, Unsupported]) -> None:
    """Add the table's fields to an object's JSON schema: null or the no-op values."""
    for name, field in table.items():
        accepted = [{"type": "null"}] + ([field.schema] if field.schema else [])
        object_schema.setdefault("properties", {})[name] = {
            "anyOf": accepted, "description": "Not supported yet: only the no-op value "
                                              "(or null) is accepted; others get a 400."}
