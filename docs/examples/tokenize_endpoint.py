"""An HTTP endpoint: POST /v1/tokenize returns the token ids the served
model's tokenizer gives a text (what a client needs to count prompt tokens).

Adding it to specserve: save this file as server/tokenize.py and add
`router.include_router(tokenize.router)` to server/routes.py. Being under
/v1, it is behind the API key (server/middleware.py) and its errors get the
OpenAI error body (server/errors.py) like every other endpoint.
"""
from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from server.errors import ERROR_RESPONSES


class TokenizeRequest(BaseModel):
    """The text to tokenize."""

    text: str = Field(max_length=100_000)


class TokenizeResponse(BaseModel):
    """Its token ids, as the engine would see them in a completion prompt."""

    token_ids: list[int]
    count: int


router = APIRouter(prefix="/v1", responses=ERROR_RESPONSES)


@router.post("/tokenize", response_model=TokenizeResponse)
async def tokenize(body: TokenizeRequest, request: Request) -> TokenizeResponse:
    token_ids = request.app.state.engine.tokenizer.encode(body.text)
    return TokenizeResponse(token_ids=token_ids, count=len(token_ids))
