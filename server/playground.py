"""The playground page: static files the package ships, served at `/` and
`/playground` (no build step, no CDN).

The page loads without an API key (BearerAuth guards /v1 and /metrics only);
it asks for the key itself and sends it on its API calls.
"""
from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).parent / "static"

router = APIRouter(include_in_schema=False)


@router.get("/")
@router.get("/playground")
async def playground() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def install_playground(app: FastAPI) -> None:
    """Serve the page and its assets (under /static)."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
