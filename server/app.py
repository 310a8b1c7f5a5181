"""The FastAPI application factory.

`create_app` wires an engine client to the routes: the lifespan starts and
stops the engine loop, error handlers give every failure an OpenAI body, a
body-size guard answers 413 before any JSON is parsed, and each app gets its
own metrics registry.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from engine.interface import EngineClient
from server import errors
from server.metrics import ServerMetrics
from server.routes import router
from server.serving import OpenAIServing


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


def create_app(engine_client: EngineClient, *, api_key: str | None = None,
               max_body_bytes: int = 1 << 20) -> FastAPI:
    """Build the OpenAI-compatible app around a (not yet started) engine client."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine_client.start()
        try:
            yield
        finally:
            await engine_client.shutdown()

    app = FastAPI(title="specserve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible inference with speculative decoding.")
    metrics = ServerMetrics(engine_client)
    app.state.engine = engine_client
    app.state.api_key = api_key
    app.state.metrics = metrics
    app.state.serving = OpenAIServing(engine_client, metrics)
    app.include_router(router)
    errors.install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    return app
