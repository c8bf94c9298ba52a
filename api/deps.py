"""FastAPI dependencies: settings, Redis, the job store, and the caller's identity."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.errors import APIError
from api.events import EventHub
from api.metrics import AUTH_FAILURES
from api.prompt_budget import PromptBudget
from api.queueing import JobQueue
from api.ratelimit import RateLimits
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.store import AsyncJobStore
from textgen_core.webhook_events.emitter import AsyncWebhookEmitter
from textgen_core.webhook_events.outbox import AsyncOutbox

if TYPE_CHECKING:
    from api.cache_answer import CacheAnswers


@dataclass
class AppState:
    settings: Settings
    redis: aioredis.Redis
    keys: Keys
    store: AsyncJobStore
    hub: EventHub
    queue: JobQueue
    limits: RateLimits
    prompts: PromptBudget
    webhooks: AsyncWebhookEmitter | None = None  # set by api.webhooks.install
    webhook_outbox: AsyncOutbox | None = None  # likewise
    cache: CacheAnswers | None = None  # set by api.main (None: no result cache, as in route tests)


def get_state(request: Request) -> AppState:
    return request.app.state.textgen  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]

_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <API key>")


def key_of(authorization: str | None, x_api_key: str | None) -> str | None:
    """The API key a request presents. Two different keys (``Authorization: Bearer`` and
    ``X-API-Key``) are refused: silently picking one would hide a client's mistake."""
    bearer = None
    if authorization:
        scheme, _, credentials = authorization.partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            bearer = credentials.strip()
    if bearer and x_api_key and not hmac.compare_digest(bearer.encode(), x_api_key.encode()):
        AUTH_FAILURES.labels("conflicting_keys").inc()
        raise APIError(401, "two different API keys: 'Authorization' and 'X-API-Key' must name the same key "
                       "(or send only one)", code="invalid_api_key")
    return bearer or x_api_key or None


def owner_of(settings: Settings, key: str | None) -> str:
    """The owner id of an API key. Keys are compared as sha256 digests in constant time."""
    if not key:
        AUTH_FAILURES.labels("missing_key").inc()
        raise APIError(401, "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                       code="invalid_api_key")
    digest = hashlib.sha256(key.encode()).hexdigest()
    owner = None
    for known, owner_id in settings.owner_ids().items():
        if hmac.compare_digest(digest, known):
            owner = owner_id
    if owner is None:
        AUTH_FAILURES.labels("invalid_key").inc()
        raise APIError(401, "invalid API key", code="invalid_api_key")
    return owner


def authenticate(
    state: StateDep,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> str:
    """The caller's owner id (the security schemes are here so that the OpenAPI page shows them)."""
    return owner_of(state.settings, key_of(request.headers.get("authorization"), header))


async def rate_limited_owner(
    owner: Annotated[str, Depends(authenticate)], state: StateDep, request: Request, response: Response
) -> str:
    """The caller's owner id, after counting this request against the key's requests per minute.
    The window's headers go on the response, error responses included (see api.errors)."""
    headers = await state.limits.hit_request(owner)
    response.headers.update(headers)
    request.state.rate_limit_headers = headers
    return owner


OwnerDep = Annotated[str, Depends(rate_limited_owner)]
"""Authenticated and rate-limited: every route that takes it counts against the key's budget."""
