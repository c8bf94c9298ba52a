"""``/v1/cache/stats``: how the result cache is doing (hits, misses, bytes written, hit rate)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from api.app.deps import CacheDep, OwnerDep, SettingsDep
from api.app.errors import ERROR_RESPONSES, APIError, ErrorResponse

router = APIRouter(prefix="/v1/cache", tags=["cache"], responses=ERROR_RESPONSES)


class CacheStats(BaseModel):
    object: Literal["cache.stats"] = "cache.stats"
    enabled: bool
    ttl_seconds: int
    separate_redis: bool = Field(description="Entries live on their own Redis (TEXTGEN_CACHE_REDIS_URL).")
    hits: int = Field(description="Jobs answered from the cache, at submit or at claim.")
    misses: int = Field(description="Cacheable jobs that generated and filled the cache.")
    hit_rate: float | None = Field(description="hits / (hits + misses); null before the first cacheable job.")
    bytes_written: int


@router.get("/stats", response_model=CacheStats, summary="Result cache hits, misses and bytes (all API keys)",
            description="The figures cover every API key, so only operator keys (TEXTGEN_OPERATOR_KEYS, by "
                        "default the first of TEXTGEN_API_KEYS) may read them; other keys get 403.",
            responses={403: {"model": ErrorResponse}})
async def cache_stats(owner: OwnerDep, settings: SettingsDep, cache: CacheDep) -> CacheStats:
    if owner not in settings.operator_owner_ids():
        raise APIError(403, "cache statistics cover every API key: only an operator key (TEXTGEN_OPERATOR_KEYS) "
                       "may read them", code="operator_only")
    counts = await cache.cache.stats() if cache else {"hits": 0, "misses": 0, "bytes_written": 0}
    seen = counts["hits"] + counts["misses"]
    return CacheStats(enabled=settings.cache_enabled, ttl_seconds=settings.cache_ttl_seconds,
                      separate_redis=bool(settings.cache_redis_url),
                      hit_rate=round(counts["hits"] / seen, 4) if seen else None, **counts)
