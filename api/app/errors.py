"""The one error envelope, ``{"error": {"message", "type", "code", "param"}}`` (OpenAI's shape),
and the handlers that put every failure into it."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis.exceptions
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    message: str
    type: str
    code: str | None = None
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(message=message, type=type or _TYPES.get(status, "server_error"), code=code,
                              param=param)
        self.headers = headers


def error_response(status: int, body: ErrorBody, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=body).model_dump(), status_code=status, headers=headers)


def not_found(what: str, param: str | None = None) -> APIError:
    return APIError(404, f"{what} not found", code=f"{what.split()[0].lower()}_not_found", param=param)


def _param(loc: tuple[int | str, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def _with_limits(request: Request, headers: dict[str, str] | None) -> dict[str, str] | None:
    """Rate-limit headers of the request's key (set by api.app.deps) go on its errors too."""
    counted: dict[str, str] = getattr(request.state, "rate_limit_headers", {})
    return {**counted, **(headers or {})} or None


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, APIError)
    return error_response(exc.status, exc.body, _with_limits(request, exc.headers))


def validation_error_body(exc: RequestValidationError) -> ErrorBody:
    """The first validation problem, naming the parameter it is about."""
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    return ErrorBody(message=message, type="invalid_request_error", code="invalid_value", param=param)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, validation_error_body(exc), _with_limits(request, None))


def _flat_routes(routes: list[BaseRoute]) -> Iterator[BaseRoute]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI wraps included routers
        yield from _flat_routes(inner.routes) if inner is not None else (route,)


def _allowed_methods(request: Request) -> str:
    """Every method any route serves at this path (Starlette names only the first route's)."""
    methods: set[str] = set()
    for route in _flat_routes(request.app.router.routes):
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path):
            methods.update(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = ErrorBody(message=str(exc.detail), type=_TYPES.get(exc.status_code, "server_error"))
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, body, _with_limits(request, headers))


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    body = ErrorBody(message="the job store is unavailable; retry shortly", type="service_unavailable",
                     code="store_unavailable")
    return error_response(503, body, {"Retry-After": "2"})


async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=exc)
    return error_response(500, ErrorBody(message="internal error", type="server_error"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(redis.exceptions.ConnectionError, _redis_down)
    app.add_exception_handler(redis.exceptions.TimeoutError, _redis_down)
    app.add_exception_handler(Exception, _unexpected)


ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 422, 429, 503)
}
"""Errors any authenticated route can answer (429: the key's requests-per-minute budget)."""

CREATE_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorResponse} for code in (403, 409, 413)
}
"""Also for routes that create (a priority above the key's ceiling, Idempotency-Key conflicts, body size limit)."""
