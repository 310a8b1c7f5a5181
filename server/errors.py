"""OpenAI-shaped errors: one exception type, one body shape, all handlers.

Every failure the server reports, from a bad temperature to a crashed
engine, leaves as `{"error": {"message", "type", "param", "code"}}` with a
fitting HTTP status, so OpenAI clients raise their usual exception classes.

Unexpected exceptions are turned into a 500 by `UnexpectedErrors`, an ASGI
middleware, rather than by an exception handler for `Exception`: Starlette
re-raises after such a handler, and uvicorn then drops the keep-alive
connection without `Connection: close`, which breaks the client's next
pooled request.
"""
from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.outputs import EngineDeadError, QueueFullError, RequestFailedError

logger = logging.getLogger(__name__)

# OpenAI's error "type" per status; unlisted 4xx are invalid requests.
_TYPES = {
    401: "authentication_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}


class ErrorInfo(BaseModel):
    """The inner object of an OpenAI error body."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """What every failed request returns: `{"error": {...}}`."""

    error: ErrorInfo


class APIError(Exception):
    """An error to report to the client with an HTTP status and OpenAI body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        """The JSON body, also used verbatim for error events inside a stream."""
        return error_body(self.status, self.message, param=self.param, code=self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    err_type = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_value" if param else None)


def not_supported(param: str) -> APIError:
    return APIError(400, f"{param} is not supported yet by this server; leave it out.",
                    param=param, code="unsupported_parameter")


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist.", param="model",
                    code="model_not_found")


def queue_full(retry_after_s: int = 1) -> APIError:
    return APIError(429, "The server is at capacity (waiting queue full); retry later.",
                    code="rate_limit_exceeded", headers={"Retry-After": str(retry_after_s)})


def engine_dead() -> APIError:
    return APIError(503, "The inference engine is not running.", code="engine_unavailable")


def internal_error() -> APIError:
    # Deliberately generic: details go to the log, never to the client.
    return APIError(500, "Internal server error.", code="internal_error")


def request_failed() -> APIError:
    # The engine failed this request only (the cause is in the server log).
    return APIError(500, "The engine failed while generating this request; other requests "
                         "are unaffected.", code="engine_request_failed")


def from_engine_error(exc: BaseException) -> APIError:
    """The status for an exception raised while running engine requests."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, QueueFullError):
        return queue_full()
    if isinstance(exc, EngineDeadError):
        return engine_dead()
    if isinstance(exc, RequestFailedError):
        return request_failed()
    if isinstance(exc, ValueError):  # the engine's verdict on this request; may name a param
        return bad_request(str(exc), getattr(exc, "param", None))
    logger.error("engine request failed", exc_info=exc)
    return internal_error()


# Shown in the OpenAPI schema of every generation route.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid parameter values or malformed JSON"},
    401: {"model": ErrorResponse, "description": "Missing or wrong API key (when one is set)"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    413: {"model": ErrorResponse, "description": "Request body larger than the limit"},
    429: {"model": ErrorResponse, "description": "Waiting queue full; see Retry-After"},
    500: {"model": ErrorResponse, "description": "Unexpected server error"},
    503: {"model": ErrorResponse, "description": "Engine not running"},
}


# pydantic names union branches in error locations ("str", "list[constrained-str]");
# they are no part of the field's name.
_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "none"}


def _validation_param(loc: tuple) -> str | None:
    """`("body", "messages", 0, "role")` -> `"messages.0.role"`. A bad mapping
    key (`("logit_bias", "x5", "[key]")`) names the mapping: the key is data."""
    if "[key]" in loc:
        loc = loc[: loc.index("[key]") - 1]
    parts = [str(p) for p in loc if p != "body" and not _is_union_tag(p)]
    return ".".join(parts) or None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (not part.isidentifier() or part in _TYPE_TAGS)


def _relevance(error: dict) -> tuple[int, bool]:
    """Deeper first; at equal depth, a bad value over a wrong type (a wrong
    type is what every branch but the meant one reports)."""
    return len(error.get("loc", ())), not str(error.get("type", "")).endswith("_type")


def validation_error(exc: RequestValidationError) -> APIError:
    """Map pydantic's complaint to a 400, naming the offending field. Of a
    union's complaints (one per branch) the most relevant is the one about
    the branch the value was meant for (`stop: ["x", ""]`: the list's item 1)."""
    errors = exc.errors()
    if not errors:
        return bad_request("Invalid request body.")
    first = max(errors, key=_relevance)
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "")
        return APIError(400, f"Malformed JSON body: {detail}".rstrip(": "), code="invalid_json")
    if first.get("type") == "missing" and tuple(first.get("loc", ())) == ("body",):
        return APIError(400, "Request body is required (JSON object).", code="invalid_json")
    param = _validation_param(tuple(first.get("loc", ())))
    where = f" ({param})" if param else ""
    return bad_request(f"{first.get('msg', 'Invalid value')}{where}", param)


async def _on_api_error(_: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _on_validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return validation_error(exc).response()


async def _on_http_exception(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
    code = "unknown_url" if status == 404 else None
    return JSONResponse(error_body(status, message, code=code), status_code=status,
                        headers=getattr(exc, "headers", None))


class UnexpectedErrors:
    """ASGI middleware: any other exception becomes a 500 with an OpenAI body,
    and the connection stays usable. An exception after the response started
    (a stream) propagates, so that the server closes the broken response."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked_send(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked_send)
        except Exception:
            logger.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise
            await internal_error().response()(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Route every exception path of the app to an OpenAI error body."""
    app.add_exception_handler(APIError, _on_api_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_middleware(UnexpectedErrors)
