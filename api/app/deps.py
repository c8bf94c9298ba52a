"""FastAPI dependencies: the caller's identity, and one narrow alias per part of the app state.

A route names the parts it uses (``SettingsDep``, ``StoreDep``, ``QueueDep``...), so its signature says
what it touches; ``StateDep`` is for the few services that orchestrate most of them (submitting a job).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request, Response, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api.app.errors import APIError
from api.app.events import EventHub
from api.app.fleet import Fleet
from api.app.metrics import AUTH_FAILURES
from api.app.prompt_budget import PromptBudget
from api.app.queueing import JobQueue
from api.app.ratelimit import RateLimits
from api.app.state import AppState, batch_store
from api.cache.answer import CacheAnswers
from textgen_core.batch_store import AsyncBatchStore
from textgen_core.keys import Keys
from textgen_core.settings import Settings
from textgen_core.store import AsyncJobStore


def get_state(request: Request) -> AppState:
    return request.app.state.textgen  # type: ignore[no-any-return]


StateDep = Annotated[AppState, Depends(get_state)]


def _settings(state: StateDep) -> Settings:
    return state.settings


def _redis(state: StateDep) -> aioredis.Redis:
    return state.redis


def _keys(state: StateDep) -> Keys:
    return state.keys


def _store(state: StateDep) -> AsyncJobStore:
    return state.store


def _hub(state: StateDep) -> EventHub:
    return state.hub


def _queue(state: StateDep) -> JobQueue:
    return state.queue


def _limits(state: StateDep) -> RateLimits:
    return state.limits


def _prompts(state: StateDep) -> PromptBudget:
    return state.prompts


def _fleet(state: StateDep) -> Fleet:
    return state.fleet


def _cache(state: StateDep) -> CacheAnswers | None:
    return state.cache


def _batches(state: StateDep) -> AsyncBatchStore:
    return batch_store(state)


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[aioredis.Redis, Depends(_redis)]
KeysDep = Annotated[Keys, Depends(_keys)]
StoreDep = Annotated[AsyncJobStore, Depends(_store)]
HubDep = Annotated[EventHub, Depends(_hub)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
LimitsDep = Annotated[RateLimits, Depends(_limits)]
PromptsDep = Annotated[PromptBudget, Depends(_prompts)]
FleetDep = Annotated[Fleet, Depends(_fleet)]
CacheDep = Annotated[CacheAnswers | None, Depends(_cache)]
"""None when the app runs without a result cache."""
BatchStoreDep = Annotated[AsyncBatchStore, Depends(_batches)]

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
    settings: SettingsDep,
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
    header: Annotated[str | None, Security(_header)],
) -> str:
    """The caller's owner id (the security schemes are here so that the OpenAPI page shows them)."""
    return owner_of(settings, key_of(request.headers.get("authorization"), header))


async def rate_limited_owner(
    owner: Annotated[str, Depends(authenticate)], limits: LimitsDep, request: Request, response: Response
) -> str:
    """The caller's owner id, after counting this request against the key's requests per minute.
    The window's headers go on the response, error responses included (see api.app.errors)."""
    headers = await limits.hit_request(owner)
    response.headers.update(headers)
    request.state.rate_limit_headers = headers
    return owner


OwnerDep = Annotated[str, Depends(rate_limited_owner)]
"""Authenticated and rate-limited: every route that takes it counts against the key's budget."""
