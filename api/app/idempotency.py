"""``Idempotency-Key`` on creating requests: a retry gets the original answer, never a second job.

The first request with a key reserves it (SET NX) with a fingerprint of its method, path,
``Cancel-After`` header and body, runs, and stores its response for ``idempotency_ttl_seconds``
(24 h by default). A repeat of the same request gets that stored response (header
``Idempotent-Replayed: true``); the same key with a different body or deadline, or while the
first is still running, is a 409. A first
request that fails frees the key, so the client can retry it.

A route takes ``idem: IdempotencyDep`` and wraps its creating call in one line::

    out = await idem.run(body, lambda: create_batch(...), BatchOut)

``body`` is the validated request model, or, for a route that reads its body itself, what
identifies the request: the raw JSON bytes, or a digest of a multipart upload's fields and file
(a multipart body's boundary differs on every send, so its bytes never repeat).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import redis.asyncio as aioredis
from fastapi import Depends, Header, Request, Response
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.app.deps import KeysDep, OwnerDep, RedisDep, SettingsDep
from api.app.errors import APIError

M = TypeVar("M", bound=BaseModel)
log = logging.getLogger(__name__)

# How long a key stays reserved by a first request that never finished (its process died).
RESERVATION_SECONDS = 300


class Idempotency:
    def __init__(self, redis_key: str | None, fingerprint: str, ttl: int, redis: aioredis.Redis,
                 response: Response):
        self.redis_key = redis_key
        self.fingerprint = fingerprint
        self.ttl = ttl
        self.redis = redis
        self.response = response

    async def run(self, body: BaseModel | bytes, create: Callable[[], Awaitable[M]], out: type[M]) -> M:
        """``create()`` once per key; repeats within the TTL get its first result back."""
        if self.redis_key is None:
            return await create()
        material = body.model_dump_json().encode() if isinstance(body, BaseModel) else body
        fingerprint = hashlib.sha256(self.fingerprint.encode() + material).hexdigest()
        reserved = json.dumps({"fingerprint": fingerprint, "state": "running"})
        if not await self.redis.set(self.redis_key, reserved, nx=True, ex=RESERVATION_SECONDS):
            return await self._replay(fingerprint, out)
        try:
            result = await create()
        except BaseException:
            await self.redis.delete(self.redis_key)
            raise
        done = json.dumps({"fingerprint": fingerprint, "state": "done", "response": result.model_dump_json()})
        try:  # created already: answer with it even if the record cannot be kept
            await self.redis.set(self.redis_key, done, ex=self.ttl)
        except RedisError as exc:
            log.warning("idempotency record not stored: %s", exc)
        return result

    async def _replay(self, fingerprint: str, out: type[M]) -> M:
        raw = await self.redis.get(self.redis_key)  # type: ignore[arg-type]
        if raw is None:  # expired between the two calls: too rare to be worth a retry loop
            raise APIError(409, "the earlier request with this Idempotency-Key is still in progress; retry",
                           code="idempotency_key_in_use", param="Idempotency-Key", headers={"Retry-After": "1"})
        record = json.loads(raw)
        if record["fingerprint"] != fingerprint:
            raise APIError(409, "this Idempotency-Key was used with a different request body",
                           code="idempotency_key_reused", param="Idempotency-Key")
        if record["state"] != "done":
            raise APIError(409, "the earlier request with this Idempotency-Key is still in progress; retry",
                           code="idempotency_key_in_use", param="Idempotency-Key", headers={"Retry-After": "1"})
        self.response.headers["Idempotent-Replayed"] = "true"
        return out.model_validate_json(record["response"])


def idempotency(
    request: Request,
    response: Response,
    owner: OwnerDep,
    redis: RedisDep,
    keys: KeysDep,
    settings: SettingsDep,
    key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=255, pattern=r"^[\x21-\x7e]+$",
        description="Any unique string (a UUID is typical). A repeat within 24 h returns the original "
                    "response; the same key with a different body is a 409.",
    )] = None,
) -> Idempotency:
    redis_key = None
    if key is not None:
        redis_key = keys.idempotency(owner, hashlib.sha256(key.encode()).hexdigest()[:32])
    # The Cancel-After header is part of the request as its body is (it sets the deadline): a repeat
    # with another deadline is another request, a 409, not a replay of the first.
    fingerprint = f"{request.method} {request.url.path}\n{request.headers.get('cancel-after', '')}\n"
    return Idempotency(redis_key, fingerprint, settings.idempotency_ttl_seconds, redis, response)


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]
