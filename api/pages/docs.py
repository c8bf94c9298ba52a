"""Interactive API docs at ``/docs`` (Swagger UI), with its script and styles served from the
``fastapi-offline`` package instead of a CDN, so they render on a machine without internet, as
the playground does. ReDoc is not served: its page fetches its logo from its own CDN."""

from __future__ import annotations

from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse

from api.app.errors import not_found

ASSETS_DIR = Path(fastapi_offline.__file__).resolve().parent / "static"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
ASSETS_URL = "/docs/assets"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
# The assets change only with the package version; a day is long enough to spare reloads.
CACHE = {"Cache-Control": "public, max-age=86400"}

router = APIRouter(tags=["docs"], include_in_schema=False)


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}", title=f"{request.app.title} - API docs",
        swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css", swagger_favicon_url=f"{root}/favicon.ico",
        oauth2_redirect_url=f"{root}{OAUTH2_REDIRECT_URL}",
    )


@router.get(OAUTH2_REDIRECT_URL)
async def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(f"{ASSETS_URL}/{{name}}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise not_found("file", "name")
    return FileResponse(ASSETS_DIR / name, media_type=ASSETS[name], headers=CACHE)
