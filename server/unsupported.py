"""OpenAI request fields that would change the output but are not implemented.

The one place where such fields are refused: a request that sets one of them
to anything but its no-op value gets a 400 naming the field, never a 200
that silently ignored it. Lifting a rejection (when a field gets
implemented) means deleting its entry here and declaring the field in
server/protocol.py.

Fields that do not change the output (`user`, `store`, `metadata`,
`service_tier`, `parallel_tool_calls`, `prediction`) and unknown fields are
accepted and ignored, as OpenAI's API accepts them.
"""
from __future__ import annotations

from typing import Any, Callable

from pydantic import BaseModel

from server import errors

NoOp = Callable[[Any], bool]


def _empty(value: Any) -> bool:
    return value in ([], {}, "")


def _text_only(value: Any) -> bool:
    return value == ["text"]


# field -> what values are accepted as no-ops (None: any value is refused).
# logit_bias / response_format: issue 14 will implement them.
_GENERATION: dict[str, NoOp | None] = {
    "logit_bias": _empty,
    "response_format": lambda v: v == {"type": "text"},
    "tools": _empty,
    "tool_choice": lambda v: v == "none",
    "functions": _empty,
    "function_call": lambda v: v == "none",
    "reasoning_effort": None,
    "audio": None,
    "modalities": _text_only,
    "web_search_options": None,
    "guided_json": None,
    "guided_regex": None,
    "guided_choice": None,
    "guided_grammar": None,
}
_COMPLETION_ONLY: dict[str, NoOp | None] = {
    "suffix": _empty,
    "best_of": None,  # checked against n in check_unsupported
}
_MESSAGE: dict[str, NoOp | None] = {
    "tool_calls": _empty,
    "function_call": None,
    "audio": None,
}


def check_unsupported(body: BaseModel, completion: bool = False) -> None:
    """400 for the first unsupported field `body` (a request) sets."""
    table = _GENERATION | _COMPLETION_ONLY if completion else _GENERATION
    extra = body.model_extra or {}
    if completion and extra.get("best_of") in (1, getattr(body, "n", 1)):
        extra = {k: v for k, v in extra.items() if k != "best_of"}  # best_of == n: a no-op
    _check(extra, table, "")
    for i, message in enumerate(getattr(body, "messages", ())):
        _check(message.model_extra or {}, _MESSAGE, f"messages.{i}.")


def _check(extra: dict[str, Any], table: dict[str, NoOp | None], prefix: str) -> None:
    for name, is_no_op in table.items():
        if name in extra and not (is_no_op is not None and is_no_op(extra[name])):
            raise errors.not_supported(prefix + name)
