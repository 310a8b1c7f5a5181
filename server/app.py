"""The FastAPI application factory.

`create_app` wires an engine client to the routes: the lifespan starts and
stops the engine loop and watches it, error handlers give every failure an
OpenAI body, middlewares check the API key and the body size before any
JSON is parsed, and each app gets its own metrics registry.

A dead engine ends the server: the watchdog calls `on_engine_dead` (the CLI
makes uvicorn exit, and `specserve serve` then exits with status 1) so that
a supervisor (Kubernetes, compose's restart policy, systemd) restarts it.
"""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from fastapi import FastAPI

from engine.interface import EngineClient
from server import errors
from server.limits import RequestLimits
from server.metrics import ServerMetrics
from server.middleware import BearerAuth, BodySizeLimit
from server.openapi import install_openapi
from server.playground import install_playground
from server.routes import router
from server.serving import OpenAIServing

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5


async def watch_engine(engine: EngineClient, on_dead: Callable[[], None] | None,
                       interval_s: float = WATCH_INTERVAL_S) -> None:
    """Return (after calling `on_dead`) once the started engine is no longer healthy."""
    while engine.is_healthy:
        await asyncio.sleep(interval_s)
    logger.critical("the inference engine is dead; the server stops so that it is restarted")
    if on_dead is not None:
        on_dead()


def create_app(engine_client: EngineClient, *, api_key: str | None = None,
               metrics_api_key: str | None = None, max_body_bytes: int = 1 << 20,
               limits: RequestLimits | None = None,
               on_engine_dead: Callable[[], None] | None = None) -> FastAPI:
    """Build the OpenAI-compatible app around a (not yet started) engine client."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await engine_client.start()
        watchdog = asyncio.ensure_future(watch_engine(engine_client, on_engine_dead))
        try:
            yield
        finally:
            watchdog.cancel()
            await engine_client.shutdown()

    app = FastAPI(title="specserve", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible inference with speculative decoding.")
    limits = limits or RequestLimits()
    metrics = ServerMetrics(engine_client)
    app.state.engine = engine_client
    app.state.api_key = api_key
    app.state.on_engine_dead = on_engine_dead
    app.state.metrics = metrics
    app.state.serving = OpenAIServing(engine_client, metrics, limits)
    app.include_router(router)
    install_playground(app)
    errors.install_error_handlers(app)
    # Added last = outermost: the key is checked first, then the body size.
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    app.add_middleware(BearerAuth, keys={"/v1": api_key, "/metrics": metrics_api_key})
    install_openapi(app, limits, secured=bool(api_key))
    return app
