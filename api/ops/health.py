"""Liveness and readiness probes (no API key)."""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from redis.exceptions import RedisError

from api.app.deps import KeysDep, RedisDep, SettingsDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    redis: bool
    workers: list[str]
    models_missing: list[str]


@router.get("/health", response_model=Health, summary="Liveness: the API process answers")
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, summary="Readiness: Redis reachable, a worker serves each model",
            responses={503: {"model": Readiness}})
async def ready(redis: RedisDep, keys: KeysDep, settings: SettingsDep) -> JSONResponse:
    workers: list[str] = []
    served: set[str] = set()
    redis_ok = True
    try:
        async for key in redis.scan_iter(match=keys.workers_pattern(), count=100):
            raw = await redis.get(key)
            if raw:
                beat = json.loads(raw)
                workers.append(beat["name"])
                served.update(m["id"] for m in beat.get("models", []))
    except RedisError:
        redis_ok = False
    missing = [m.id for m in settings.models if m.id not in served]
    ok = redis_ok and not missing
    body = Readiness(status="ready" if ok else "not_ready", redis=redis_ok, workers=sorted(workers),
                     models_missing=missing)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
