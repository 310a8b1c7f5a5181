"""HTTP endpoints. Thin on purpose: serving.py owns the protocol."""
from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from server import errors
from server.errors import ERROR_RESPONSES, ErrorResponse
from server.protocol import (
    ChatCompletionChunk,
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


async def require_api_key(request: Request) -> None:
    """401 unless the bearer token matches the configured key (if any)."""
    expected = request.app.state.api_key
    if not expected:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(),
                                                             expected.encode()):
        raise errors.APIError(401, "Invalid or missing API key (Authorization: Bearer ...).",
                              code="invalid_api_key")


def _stream_doc(chunk_model: type) -> dict:
    name = chunk_model.__name__
    return {200: {"description": f"JSON body, or with stream=true Server-Sent Events: "
                                 f"`data: <{name}>` lines ending with `data: [DONE]`",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}


v1 = APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=ERROR_RESPONSES)


@v1.post("/chat/completions", response_model=ChatCompletionResponse,
         responses=_stream_doc(ChatCompletionChunk))
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    return await _serving(request).chat(body, request)


@v1.post("/completions", response_model=CompletionResponse,
         responses=_stream_doc(CompletionResponse))
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
                          "description": "Prometheus text exposition"}})
async def metrics(request: Request) -> Response:
    body = request.app.state.metrics.exposition()
    return Response(body, media_type=CONTENT_TYPE_LATEST)


router = APIRouter()
router.include_router(v1)
router.include_router(ops)
