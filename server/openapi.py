"""The served OpenAPI document, made to match what the server does.

FastAPI derives most of it from the pydantic models; this adds what the
models cannot say:
- streamed responses: `text/event-stream` whose events are `data: <chunk>`
  (the ChatCompletionChunk / CompletionResponse schema), an in-band error
  body, or the final `data: [DONE]`; described per event with OpenAPI 3.2's
  `itemSchema` (the whole body is a string to 3.1 readers);
- the per-server limits: `--max-prompts-per-request` on `prompt` lists,
  `--max-choices-per-request` on `n`;
- the OpenAI fields we refuse (server/unsupported.py), with the no-op
  values that are accepted;
- the bearer-key security scheme when an API key is set;
- exact integer bounds (FastAPI's copy of the request schemas has floats).
"""
from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from server import unsupported
from server.errors import ErrorResponse
from server.limits import RequestLimits
from server.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    CompletionRequest,
    CompletionResponse,
)

_REF = "#/components/schemas/{model}"
STREAMS = {"/v1/chat/completions": ChatCompletionChunk, "/v1/completions": CompletionResponse}


def install_openapi(app: FastAPI, limits: RequestLimits, secured: bool) -> None:
    """Serve the generated document with the additions above (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version,
                              description=app.description, routes=app.routes)
            for path, chunk_model in STREAMS.items():
                _document_stream(doc, path, chunk_model)
            for model in (ChatCompletionRequest, CompletionRequest):
                _add_component(doc, model, replace=True)
            schemas = doc["components"]["schemas"]
            _limit_prompt_lists(schemas["CompletionRequest"], limits)
            for name in ("ChatCompletionRequest", "CompletionRequest"):
                _limit_choices(schemas[name], limits)
            unsupported.document(schemas["ChatCompletionRequest"], unsupported.GENERATION)
            unsupported.document(schemas["CompletionRequest"], unsupported.COMPLETION)
            unsupported.document(schemas["ChatMessage"], unsupported.MESSAGE)
            if secured:
                _document_bearer_key(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi


def sse_event_schema(chunk_model: type[BaseModel]) -> dict[str, Any]:
    """One event of a stream: its `data` is `[DONE]`, or JSON: a chunk or an error body."""
    json_data = {"contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [{"$ref": _REF.format(model=chunk_model.__name__)},
                                             {"$ref": _REF.format(model="ErrorResponse")}]}}
    return {"type": "object", "required": ["data"],
            "properties": {"data": {"type": "string", "if": {"const": "[DONE]"},
                                    "else": json_data}}}


def _document_stream(doc: dict[str, Any], path: str, chunk_model: type[BaseModel]) -> None:
    for model in (chunk_model, ErrorResponse):
        _add_component(doc, model)
    name = chunk_model.__name__
    ok = doc["paths"][path]["post"]["responses"]["200"]
    ok["description"] = (f"JSON body; with stream=true Server-Sent Events: `data: <{name}>` "
                         "events, then `data: [DONE]` (an error after the headers were sent "
                         "comes as one `data: <ErrorResponse>` event)")
    ok["content"]["text/event-stream"] = {"itemSchema": sse_event_schema(chunk_model)}


def _add_component(doc: dict[str, Any], model: type[BaseModel], replace: bool = False) -> None:
    """The model's schema as pydantic writes it. `replace`: over FastAPI's
    copy, which turns integer bounds into floats (int64's maximum becomes
    2**63, a seed the server refuses)."""
    schemas = doc["components"]["schemas"]
    schema = model.model_json_schema(ref_template=_REF)
    for name, definition in schema.pop("$defs", {}).items():
        schemas[name] = definition if replace else schemas.get(name, definition)
    schemas[model.__name__] = schema if replace else schemas.get(model.__name__, schema)


def _limit_prompt_lists(schema: dict[str, Any], limits: RequestLimits) -> None:
    """maxItems on the two list-of-prompts forms (a list of ids is ONE prompt)."""
    prompt = schema["properties"]["prompt"]
    for alternative in prompt["anyOf"]:
        items = alternative.get("items", {})
        if alternative.get("type") == "array" and items.get("type") in ("string", "array"):
            alternative["maxItems"] = limits.max_prompts


def _limit_choices(schema: dict[str, Any], limits: RequestLimits) -> None:
    """n <= --max-choices-per-request (prompts x n is checked too; no schema can say it)."""
    for alternative in schema["properties"]["n"]["anyOf"]:
        if alternative.get("type") == "integer":
            alternative["maximum"] = min(alternative["maximum"], limits.max_choices)


def _document_bearer_key(doc: dict[str, Any]) -> None:
    doc["components"]["securitySchemes"] = {"bearerKey": {"type": "http", "scheme": "bearer"}}
    for path, operations in doc["paths"].items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"bearerKey": []}]
