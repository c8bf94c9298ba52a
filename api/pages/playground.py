"""The browser playground: a static page (no build step) served at ``/``.

It talks to the same OpenAI-compatible endpoints as any client, with the API key the user
types kept in the browser's localStorage; the server holds no session for it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.app.errors import not_found

STATIC = Path(__file__).resolve().parent.parent / "static"
ASSETS = {"playground.js": "text/javascript", "playground.css": "text/css"}
NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(tags=["playground"], include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers=NO_CACHE)


@router.get("/favicon.ico")
async def favicon() -> FileResponse:
    return FileResponse(STATIC / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"})


@router.get("/static/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise not_found("file", "name")
    return FileResponse(STATIC / name, media_type=ASSETS[name], headers=NO_CACHE)
