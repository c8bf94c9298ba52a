"""Refuse hostile requests before any route reads them (pure ASGI middleware).

In this order, so that a refusal costs almost nothing:

1. A request that carries a body (POST, PUT, PATCH) to ``/v1/`` without a valid API key: 401,
   decided from the headers alone. Not one byte of the body is read.
2. Larger than its route's limit: 413, from ``Content-Length`` or while reading a chunked body,
   so a huge upload is never buffered whole. Uploads (multipart) stream through to the route.
3. A body that is not JSON where the route takes JSON (a form-encoded or text body): 400 saying
   to send ``Content-Type: application/json``.
4. JSON the API will not take (:mod:`api.app.safe_json`): malformed (422, with line and column),
   nested too deep (400), ``NaN``, out-of-range numbers or lone surrogates (422). Large bodies
   are parsed on a worker thread, so the event loop keeps serving other requests.

Every refusal uses the one error envelope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anyio import to_thread
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.app.deps import key_of, owner_of
from api.app.errors import APIError, error_response
from api.app.safe_json import BadJSON, loads
from textgen_core.settings import Settings

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Bodies above this are parsed off the event loop (a thread hop costs more than parsing less).
OFF_LOOP_BYTES = 64 * 1024
PARSED_BODY = "textgen.json_body"
"""Where the guard leaves the parsed JSON body (in ``scope["state"]``) for routes that read
their body themselves, so it is parsed once."""

NOT_JSON = "send the request body as JSON with the header 'Content-Type: application/json'"


@dataclass(frozen=True)
class BodyRule:
    """What one path accepts: JSON up to ``json_bytes``, and multipart uploads up to
    ``upload_bytes`` (0: none)."""

    json_bytes: int
    upload_bytes: int = 0


def parsed_body(request: Request) -> Any:
    """The JSON body the guard parsed (None when the request had none)."""
    return request.scope.get("state", {}).get(PARSED_BODY)


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return not media or media == "application/json" or media.endswith("+json")


class RequestGuard:
    def __init__(self, app: ASGIApp, *, settings: Settings, rules: dict[str, BodyRule] | None = None):
        self.app = app
        self.settings = settings
        self.default = BodyRule(json_bytes=settings.max_body_bytes)
        self.rules = rules or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"].rstrip("/")
        rule = self.rules.get(path, self.default)
        try:
            if path.startswith("/v1/"):
                owner_of(self.settings, key_of(headers.get("authorization"), headers.get("x-api-key")))
            admitted = await self._admit(scope, receive, headers, rule)
        except APIError as exc:
            await error_response(exc.status, exc.body, exc.headers)(scope, receive, send)
            return
        if admitted is None:
            return  # the client went away
        if isinstance(admitted, int):
            await self._stream(scope, receive, send, admitted)
            return
        body = admitted
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _admit(self, scope: Scope, receive: Receive, headers: dict[str, str],
                     rule: BodyRule) -> bytes | int | None:
        """The checked body; or, for an upload, the limit to stream it under; None if the client left.
        Raises APIError for a refusal."""
        content_type = headers.get("content-type", "")
        upload = rule.upload_bytes > 0 and content_type.lower().startswith("multipart/form-data")
        limit = rule.upload_bytes if upload else rule.json_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(limit)
        if upload:
            return limit
        body = await _read(receive, limit)
        if body:
            if not is_json(content_type):
                or_upload = " (or upload a file as multipart/form-data)" if rule.upload_bytes else ""
                raise APIError(400, f"{NOT_JSON}{or_upload}; this body is {content_type.split(';')[0]!r}",
                               code="unsupported_content_type")
            scope.setdefault("state", {})[PARSED_BODY] = await _parse(body, self.settings.max_json_depth)
        return body

    async def _stream(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        """Pass an upload through as it arrives, counting: past ``limit`` the client gets 413 and
        the route sees a disconnect (whatever it then answers is dropped)."""
        size = 0
        refused = False

        async def counted() -> Message:
            nonlocal size, refused
            message = await receive()
            size += len(message.get("body", b""))
            if size > limit and not refused:
                refused = True
                exc = _too_large(limit)
                await error_response(exc.status, exc.body)(scope, receive, send)
                return {"type": "http.disconnect"}
            return message

        async def unless_refused(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, unless_refused)
        except Exception:
            if not refused:
                raise


async def _read(receive: Receive, limit: int) -> bytes | None:
    """The whole body, refusing (413) as soon as it passes ``limit``; None if the client left."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _parse(body: bytes, max_depth: int) -> Any:
    try:
        if len(body) > OFF_LOOP_BYTES:
            return await to_thread.run_sync(loads, body, max_depth)
        return loads(body, max_depth)
    except BadJSON as exc:
        message = str(exc)
        if exc.code == "invalid_json":
            message = f"the request body is {message}"
        raise APIError(exc.status, message, code=exc.code, type="invalid_request_error") from None


def _too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes", code="request_too_large",
                    type="invalid_request_error")

