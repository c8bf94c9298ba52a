"""What the workers say about themselves: their heartbeats, read from Redis.

A worker refreshes ``Keys.worker(name)`` every few seconds with the models it has loaded; a
key that expired means the worker is gone. The API reads these to list models with where
they run, and to answer 503 at once instead of queueing work that no worker would take.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from textgen_core.keys import Keys

POLL_SECONDS = 0.25


@dataclass(frozen=True)
class LoadedOn:
    """One model loaded on one worker, as its heartbeat reports it."""

    worker: str
    started_at: float
    device: str | None
    dtype: str | None
    max_batch: int | None
    context_length: int | None
    cache_profile: str | None = None  # weights, device and dtype (textgen_core.cache.model_profile)


@dataclass(frozen=True)
class Fleet:
    """The workers' heartbeats in Redis, read on demand (nothing is cached between requests)."""

    redis: aioredis.Redis
    keys: Keys

    async def loaded_models(self) -> dict[str, list[LoadedOn]]:
        return await loaded_models(self.redis, self.keys)

    async def wait_for_worker(self, model: str, timeout: float) -> bool:
        return await wait_for_worker(self.redis, self.keys, model, timeout)


async def loaded_models(redis: aioredis.Redis, keys: Keys) -> dict[str, list[LoadedOn]]:
    """Model id -> the live workers that have it loaded."""
    out: dict[str, list[LoadedOn]] = {}
    async for key in redis.scan_iter(match=keys.workers_pattern(), count=100):
        raw = await redis.get(key)
        if not raw:
            continue  # expired between SCAN and GET
        try:
            beat: dict[str, Any] = json.loads(raw)
        except ValueError:
            continue
        for model in beat.get("models", []):
            out.setdefault(model["id"], []).append(LoadedOn(
                worker=str(beat.get("name", key)),
                started_at=float(beat.get("started_at") or 0),
                device=model.get("device"),
                dtype=model.get("dtype"),
                max_batch=model.get("max_batch"),
                context_length=model.get("context_length"),
                cache_profile=model.get("cache_profile"),
            ))
    for workers in out.values():
        workers.sort(key=lambda w: w.worker)
    return out


async def wait_for_worker(redis: aioredis.Redis, keys: Keys, model: str, timeout: float) -> bool:
    """True once some live worker serves ``model``; False after ``timeout`` seconds without one.

    The short wait covers a worker that is restarting; a longer one would only hold the client.
    """
    deadline = time.monotonic() + timeout
    while True:
        if (await loaded_models(redis, keys)).get(model):
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
