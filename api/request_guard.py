"""Refuse hostile request bodies before any route parses them (ASGI middleware).

- Larger than ``max_body_bytes``: 413, decided from ``Content-Length`` or while reading a
  chunked body, so a huge upload is never buffered whole.
- JSON nested deeper than ``max_json_depth``: 400 (deep nesting exhausts parsers' stacks).
- JSON that cannot be stored and echoed back as JSON: ``NaN`` and ``Infinity``, numbers out
  of float range, and lone UTF-16 surrogates (not encodable as UTF-8): 422. Other control
  characters, NUL included, are ordinary text: stored and returned intact.

Every refusal uses the one error envelope.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import ErrorBody, error_response

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


class BadJSON(ValueError):
    def __init__(self, status: int, message: str, code: str):
        super().__init__(message)
        self.status = status
        self.code = code


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit`` (without parsing)."""
    depth = 0
    for match in _BRACKETS.finditer(_STRINGS.sub(b'""', body)):
        if match.group() in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _no_constants(name: str) -> Any:
    raise BadJSON(422, f"{name} is not a valid JSON number", "invalid_number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadJSON(422, f"the number {text[:32]} is out of range", "invalid_number")
    return value


def check_text(value: Any) -> None:
    """Walk parsed JSON; refuse strings (values or keys) that cannot be encoded as UTF-8."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str) and not item.isascii():
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise BadJSON(422, "text must be valid Unicode: lone UTF-16 surrogates are not allowed",
                              "invalid_unicode") from None


def check_json(body: bytes, max_depth: int) -> None:
    if json_depth_exceeds(body, max_depth):
        raise BadJSON(400, f"JSON nested deeper than {max_depth} levels is refused", "json_too_deep")
    try:
        parsed = json.loads(body, parse_constant=_no_constants, parse_float=_finite)
    except BadJSON:
        raise
    except ValueError:
        return  # malformed JSON: the route's own parser answers with its 4xx
    check_text(parsed)


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int,
                 upload_paths: tuple[str, ...] = (), max_upload_bytes: int = 0):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth
        # Batch inputs and file uploads are large by nature: they get their own, larger limit.
        self.upload_paths = upload_paths
        self.max_upload_bytes = max(max_upload_bytes, max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        limit = self.max_upload_bytes if scope["path"].rstrip("/") in self.upload_paths else self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(scope, receive, send, 413, self._too_large(limit), "request_too_large")
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(scope, receive, send, 413, self._too_large(limit), "request_too_large")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        content_type = headers.get("content-type", "")
        if body and (not content_type or "json" in content_type):
            try:
                check_json(body, self.max_json_depth)
            except BadJSON as exc:
                await self._refuse(scope, receive, send, exc.status, str(exc), exc.code)
                return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"request body larger than {limit} bytes"

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str) -> None:
        body = ErrorBody(message=message, type="invalid_request_error", code=code)
        await error_response(status, body)(scope, receive, send)
