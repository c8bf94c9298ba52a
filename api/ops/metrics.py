"""``/metrics``: Prometheus exposition of this API process plus queue depth and workers from Redis.

No API key, like the health probes: keep it on the internal network (the compose file does).
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from api.app.deps import KeysDep, RedisDep, SettingsDep
from api.app.metrics import refresh_from_redis

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def prometheus_metrics(redis: RedisDep, keys: KeysDep, settings: SettingsDep) -> Response:
    await refresh_from_redis(redis, keys, [m.id for m in settings.models])
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
