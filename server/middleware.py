"""ASGI middlewares that act before a request body is parsed.

`BearerAuth` checks the API key from the headers alone, so an unauthenticated
client learns nothing from how its body is parsed (a 401 comes before a 400
or a 413); `BodySizeLimit` answers 413 before any JSON is parsed.
"""
from __future__ import annotations

import hmac
from typing import Any

from fastapi.responses import JSONResponse

from server import errors


class BearerAuth:
    """ASGI middleware: 401 unless `Authorization: Bearer KEY` matches the
    key configured for the path's prefix (e.g. "/v1" -> the API key,
    "/metrics" -> the metrics key). Paths without a key pass."""

    def __init__(self, app: Any, keys: dict[str, str]):
        self.app = app
        self.keys = {prefix: key for prefix, key in keys.items() if key}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        expected = self._key_for(scope) if scope["type"] == "http" else None
        if expected is None or _presented(scope, expected):
            return await self.app(scope, receive, send)
        rejection = errors.APIError(401, "Invalid or missing API key (Authorization: Bearer ...).",
                                    code="invalid_api_key")
        await rejection.response()(scope, receive, send)

    def _key_for(self, scope: dict) -> str | None:
        path = scope.get("path", "")
        for prefix, key in self.keys.items():
            if path == prefix or path.startswith(prefix + "/"):
                return key
        return None


def _presented(scope: dict, expected: str) -> bool:
    """Whether the request carries `Authorization: Bearer <expected>`."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(),
                                                                       expected.encode())
    return False


class BodySizeLimit:
    """ASGI middleware: 413 for bodies over `max_bytes`.

    Content-Length is checked first; chunked bodies are read up to the limit
    and then replayed to the app, so a lying or missing header cannot get a
    larger body through. Bodies are small (a prompt), so buffering is cheap.
    """

    def __init__(self, app: Any, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self._declared_length(scope) > self.max_bytes:
            return await self._reject(scope, receive, send)
        body, complete = await self._read(receive)
        if not complete:
            return await self._reject(scope, receive, send)
        await self.app(scope, _replay(body, receive), send)

    @staticmethod
    def _declared_length(scope: dict) -> int:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    return int(value)
                except ValueError:
                    return 0  # malformed: the streamed-size check still applies
        return 0

    async def _read(self, receive: Any) -> tuple[bytes, bool]:
        """Read the body; complete is False when it exceeded the limit."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return b"".join(chunks), True  # client left; the app will notice
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return b"", False
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), True

    async def _reject(self, scope: dict, receive: Any, send: Any) -> None:
        body = errors.error_body(413, f"Request body exceeds {self.max_bytes} bytes.",
                                 code="request_too_large")
        await JSONResponse(body, status_code=413)(scope, receive, send)


def _replay(body: bytes, receive: Any) -> Any:
    """A receive that hands out the buffered body once, then the real messages."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> dict:
        if pending:
            return pending.pop()
        return await receive()

    return replay
