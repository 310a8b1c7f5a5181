"""HTTP endpoints. Thin on purpose: serving.py owns the protocol."""
from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server import errors
from server.errors import ERROR_RESPONSES, ErrorResponse
from server.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    HealthResponse,
    ModelCard,
    ModelList,
)
from server.serving import OpenAIServing


def _serving(request: Request) -> OpenAIServing:
    return request.app.state.serving


# Streamed responses; server/openapi.py adds the schema of their events.
_STREAMS = {200: {"content": {"text/event-stream": {}}}}


# The API key is checked by server/middleware.py, before the body is read.
v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@v1.post("/chat/completions", response_model=ChatCompletionResponse,
         responses=_STREAMS)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _serving(request).chat(body, request)


@v1.post("/completions", response_model=CompletionResponse,
         responses=_STREAMS)
async def completions(body: CompletionRequest, request: Request) -> Response:
    return await _serving(request).completion(body, request)


@v1.get("/models", response_model=ModelList)
async def list_models(request: Request) -> ModelList:
    return _serving(request).models()


@v1.get("/models/{model_id:path}", response_model=ModelCard)
async def get_model(model_id: str, request: Request) -> ModelCard:
    return _serving(request).model(model_id)


ops = APIRouter()


@ops.get("/health", response_model=HealthResponse,
         responses={503: {"model": ErrorResponse, "description": "Engine not running"}})
async def health(request: Request) -> Response:
    if not request.app.state.engine.is_healthy:
        return errors.engine_dead().response()
    return JSONResponse(HealthResponse().model_dump())


@ops.get("/metrics", response_class=Response,
         responses={200: {"content": {CONTENT_TYPE_LATEST: {}},
                          "description": "Prometheus text exposition"},
                    401: {"model": ErrorResponse,
                          "description": "Missing or wrong metrics key (when one is set)"}})
async def metrics(request: Request) -> Response:
    body = request.app.state.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


router = APIRouter()
router.include_router(v1)
router.include_router(ops)
